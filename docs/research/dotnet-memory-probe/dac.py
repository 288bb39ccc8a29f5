import sys; sys.path.insert(0, "/tmp/dnx")
from mem import *
pid = int(sys.argv[1])
p = Proc(pid)
base, path = p.base_of("libcoreclr.so")
S = syms(path)
tab, size = S["g_dacTable"]
print(path, hex(base), "g_dacTable", hex(tab), size)
raw = p.read(base + tab, size)
# symbolize using symtab if present
bysym = sorted((v[0], k) for k, v in S.items())
import bisect
def name(rva):
    i = bisect.bisect_right(bysym, (rva, "\xff")) - 1
    if i >= 0: return f"{bysym[i][1]}+{rva-bysym[i][0]:#x}"
    return "?"
w = 4 if "3.1" in path else 8
for i in range(size // w):
    v = struct.unpack_from("<I" if w == 4 else "<Q", raw, i * w)[0]
    rva = v if w == 4 else (v - base if v else 0)
    print(i, hex(v), hex(rva), name(rva) if v else "")
