import sys; sys.path.insert(0, "/tmp/dnx")
from mem import *
import pickle
pid = int(sys.argv[1]); ver = sys.argv[2]; flagbyte = sys.argv[3] == "1"
p = Proc(pid)
heaps, res = pickle.load(open(f"/tmp/dnx/res{ver}.pkl", "rb"))
names = {}
for line in open(f"/tmp/dnx/names{ver}.txt"):
    a = line.split()
    names[int(a[0], 16)] = " ".join(a[1:])
class NR:
    def __init__(s, data): s.d = data; s.i = 0; s.half = None
    def nib(s):
        if s.half is not None:
            n = s.half; s.half = None; return n
        b = s.d[s.i]; s.i += 1; s.half = b >> 4; return b & 0xf
    def u32(s):
        v = 0
        for _ in range(11):
            n = s.nib(); v = (v << 3) | (n & 7)
            if not n & 8: return v
        raise ValueError("bad")
    def align(s): s.half = None
for cs, rch, dbg, md, nunw, rf in res:
    nm = names.get(cs, "?")
    if "probe.dll" not in nm: continue
    if not dbg: print(hex(cs), nm, "no debug info"); continue
    data = p.read(dbg, 512)
    off = 0
    if flagbyte:
        fl = data[0]; off = 1
        assert fl & ~3 == 0, fl
        if fl & 1:  # patchpoint info: skip
            # PatchpointInfo: 8.0 size 32? numberOfLocals at +8
            nl = struct.unpack_from("<I", data, off + 8)[0]
            off += 32 + 4 * nl
        if fl & 2:
            rl = struct.unpack_from("<I", data, off)[0]; off += 4 + rl
    else:
        fl = None
    r = NR(data[off:])
    cbB = r.u32(); cbV = r.u32(); r.align()
    b = NR(data[off + r.i: off + r.i + cbB])
    n = b.u32(); nat = 0; ents = []
    for _ in range(n):
        nat += b.u32(); il = (b.u32() - 3) & 0xffffffff; src = b.u32()
        ents.append((nat, il if il < 0x80000000 else il - (1 << 32), src))
    print(hex(cs), nm, "flags", fl, "cbBounds", cbB, "cbVars", cbV, "n", n, "size", hex(rf[1]-rf[0]))
    print("   ", [(hex(a), hex(b_) if b_ >= 0 else b_, c) for a, b_, c in ents][:14])
