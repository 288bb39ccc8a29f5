import sys; sys.path.insert(0, "/tmp/dnx")
from mem import *
pid = int(sys.argv[1]); p = Proc(pid)
base, path = p.base_of("libcoreclr.so"); S = syms(path)
tab = base + S["g_dacTable"][0]
slot = lambda i: p.u64(tab + 8*i)
crm = slot(0)
print("g_codeRangeMap at", hex(crm), "cleanup", hex(p.u64(crm + 256*8)))
sections = {}
def walk(levelptr, level):
    data = p.read(levelptr, 256*8)
    for i in range(256):
        v = struct.unpack_from("<Q", data, i*8)[0] & ~1
        if not v: continue
        if level > 1: walk(v, level - 1)
        else:
            frag = v
            while frag:
                nxt, b, e, rs = struct.unpack("<QQQQ", p.read(frag, 32))
                sections[rs] = (b, e)
                frag = nxt & ~1
walk(crm, 5)
for rs in sorted(sections, key=lambda r: p.u64(r)):
    q = [p.u64(rs + 8*i) for i in range(9)]
    flags = q[2] & 0xffffffff
    m = p.mapping(q[0]); 
    print(hex(rs), "range", hex(q[0]), hex(q[1]), "flags", flags, "jit", hex(q[3]), "r2rmod", hex(q[4]), "heaplist", hex(q[5]), "rangelist", hex(q[6]), "unw", hex(q[7]), "nfd", hex(q[8]), (m[4].split('/')[-1] if m else ""))
    if flags & 2:
        hl = q[5]; h = [p.u64(hl + 8*i) for i in range(10)]
        print("   HeapList", [hex(x) for x in h])
    if flags & 4:
        rl = q[6]
        print("   RangeList", hex(rl), "type@0x120", p.u32(rl + 0x120), [hex(p.u64(rl + 8*i)) for i in range(4)])
ej = p.u64(slot(4))
print("EEJitManager obj", hex(ej), [hex(p.u64(ej + 8*i)) for i in range(10)])
