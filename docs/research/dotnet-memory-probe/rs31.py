import sys; sys.path.insert(0, "/tmp/dnx")
from mem import *
pid = int(sys.argv[1]); p = Proc(pid)
base, path = p.base_of("libcoreclr.so"); S = syms(path)
tab = base + S["g_dacTable"][0]
slot = lambda i: base + p.u32(tab + 4*i)
head = p.u64(slot(0))
print("m_CodeRangeList ->", hex(head))
rs = head; n = 0
while rs and n < 50:
    q = [p.u64(rs + 8*i) for i in range(8)]
    m = p.mapping(q[0])
    print(hex(rs), [hex(x) for x in q], m[4] if m else "")
    rs = q[3]; n += 1
print("---- heaps")
rs = head
while rs:
    flags = p.u32(rs + 0x28)
    if flags & 2:
        hl = p.u64(rs + 0x30)
        q = [p.u64(hl + 8*i) for i in range(12)]
        print("RS", hex(p.u64(rs)), hex(p.u64(rs+8)), "HeapList", hex(hl), [hex(x) for x in q])
    rs = p.u64(rs + 0x18)
ej = p.u64(slot(4))
print("EEJitManager obj", hex(ej), [hex(p.u64(ej + 8*i)) for i in range(12)])
print("vtable EEJitManager expected", hex(base + p.u32(tab + 4*110)))
