import sys; sys.path.insert(0, "/tmp/dnx")
from mem import *
pid = int(sys.argv[1]); p = Proc(pid)
mod = int(sys.argv[2], 16)
def isptr(v): return 0x10000 < v < 0x7fffffffffff and p.mapping(v) is not None
def find_str(a, depth, trail):
    try: blob = p.read(a, 0x200)
    except Exception: return
    for off in range(0, 0x200, 8):
        v = struct.unpack_from("<Q", blob, off)[0]
        if not isptr(v): continue
        try:
            s = p.wstr(v, 400)
            if (".dll" in s or "/" in s) and len(s) > 5 and all(31 < ord(c) < 0x3000 for c in s):
                print("W", trail + [hex(off)], s)
            c = p.cstr(v, 200)
            if len(c) > 3 and c.isprintable() and ("." in c or c.isalpha()) and depth == 0:
                print("A", trail + [hex(off)], c)
        except Exception: pass
        if depth < 2: find_str(v, depth + 1, trail + [hex(off)])
find_str(mod, 0, [])
