import sys; sys.path.insert(0, "/tmp/dnx"); sys.path.insert(0, "/tmp/dnx/py")
from mem import *
import pickle, dnfile, functools, logging
logging.disable(logging.CRITICAL)
pid = int(sys.argv[1]); ver = sys.argv[2]
L = dict(x.split("=") for x in sys.argv[3:])  # layout overrides
REM = int(L.get("rem", 12)); MTMOD = int(L.get("mtmod", "0x18"), 16)
MODPE = int(L.get("modpe", "0x110"), 16); PEIMG = int(L.get("peimg", "0x8"), 16); IMGPATH = int(L.get("imgpath", "0x0"), 16)
REL = L.get("rel", "0") == "1"
p = Proc(pid)
heaps, res = pickle.load(open(f"/tmp/dnx/res{ver}.pkl", "rb"))
def relptr(addr):
    v = p.u64(addr)
    if not REL: return v
    if v == 0: return 0
    t = (addr + v) & 0xffffffffffffffff
    if t & 1: t = p.u64(t - 1)
    return t
@functools.lru_cache(None)
def pe(path):
    d = dnfile.dnPE(path)
    md = d.net.mdtables
    owners = {}
    for td in md.TypeDef.rows:
        for m in (td.MethodList or []): owners[m.row_index] = (str(td.TypeNamespace), str(td.TypeName))
    return md, owners
def modpath(mod):
    pa = p.u64(mod + MODPE); img = p.u64(pa + PEIMG)
    return p.wstr(p.u64(img + IMGPATH + 0x10), 1024)
for cs, rch, dbg, md, nunw, rf in res:
    w3, ci, f2, slotno, flags = struct.unpack("<HBBHH", p.read(md, 8))
    chunk = md - ci*8 - 0x18
    mt = relptr(chunk)
    ftr = p.u16(chunk + 0x12)
    tok = 0x06000000 | ((ftr & ((1 << (24 - REM)) - 1)) << REM) | (w3 & ((1 << REM) - 1))
    cls = flags & 7
    if cls == 7:
        print(hex(cs), "DYNAMIC", p.cstr(p.u64(md + 0x18))); continue
    mod = relptr(mt + MTMOD)
    try:
        path = modpath(mod)
        mdt, owners = pe(path)
        row = tok & 0xffffff
        name = str(mdt.MethodDef.rows[row - 1].Name)
        ns, tn = owners.get(row, ("?", "?"))
        print(hex(cs), hex(tok), f"cls={cls}", path.split("/")[-1], f"{ns}.{tn}::{name}")
    except Exception as e:
        print(hex(cs), hex(tok), "mod", hex(mod), "ERR", e)
