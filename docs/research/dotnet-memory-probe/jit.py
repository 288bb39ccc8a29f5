import sys; sys.path.insert(0, "/tmp/dnx"); sys.path.insert(0, "/tmp/dnx/py")
from mem import *
pid = int(sys.argv[1]); ver = sys.argv[2]  # "8" or "31"
p = Proc(pid)
base, path = p.base_of("libcoreclr.so"); S = syms(path)
tab = base + S["g_dacTable"][0]
if ver == "31":
    slot = lambda i: base + p.u32(tab + 4*i)
else:
    slot = lambda i: p.u64(tab + 8*i)
ej = p.u64(slot(4))
hl = p.u64(ej + 0x10)
heaps = []
while hl:
    h = [p.u64(hl + 8*i) for i in range(6)]
    heaps.append((hl, h[2], h[3], h[4], h[5]))
    hl = h[0]
def starts(start, end, mapbase, hdrmap):
    n = (end - mapbase) // 256 + 1
    data = p.read(hdrmap, n * 4)
    out = []
    for i in range(n):
        dw = struct.unpack_from("<I", data, 4*i)[0]
        if not dw: continue
        for j in range(8):
            nib = (dw >> (28 - 4*j)) & 0xf
            if nib:
                out.append(mapbase + (i*8 + j)*32 + (nib - 1)*4)
    return out
res = []
for hl, start, end, mapbase, hdrmap in heaps:
    print("heap", hex(hl), hex(start), hex(end), "mapBase", hex(mapbase), "map", hex(hdrmap))
    for cs in starts(start, end, mapbase, hdrmap):
        rch = p.u64(cs - 8)
        if rch <= 0xf:
            print("  stub block", hex(cs), "kind", rch); continue
        dbg, eh, gc, md = [p.u64(rch + 8*i) for i in range(4)]
        nunw = p.u32(rch + 0x20)
        rf = [p.u32(rch + 0x24 + 4*k) for k in range(3)]
        res.append((cs, rch, dbg, md, nunw, rf))
print(len(res), "methods")
import pickle; pickle.dump((heaps, res), open(f"/tmp/dnx/res{ver}.pkl", "wb"))
for r in res[:8]:
    cs, rch, dbg, md, nunw, rf = r
    print(hex(cs), "rch", hex(rch), "dbg", hex(dbg), "md", hex(md), "nunw", nunw, "rf", [hex(x) for x in rf], "md bytes", p.read(md, 16).hex())
