import struct, sys, os, re, subprocess
class Proc:
    def __init__(self, pid):
        self.pid = pid
        self.f = open(f"/proc/{pid}/mem", "rb", buffering=0)
        self.maps = []
        for line in open(f"/proc/{pid}/maps"):
            p = line.split()
            a, b = [int(x, 16) for x in p[0].split("-")]
            self.maps.append((a, b, p[1], int(p[2], 16), p[5] if len(p) > 5 else ""))
    def read(self, addr, n):
        self.f.seek(addr); return self.f.read(n)
    def u64(self, a): return struct.unpack("<Q", self.read(a, 8))[0]
    def u32(self, a): return struct.unpack("<I", self.read(a, 4))[0]
    def u16(self, a): return struct.unpack("<H", self.read(a, 2))[0]
    def u8(self, a): return self.read(a, 1)[0]
    def base_of(self, name):
        for a, b, perm, off, path in self.maps:
            if path.endswith(name) and off == 0: return a, path
    def mapping(self, addr):
        for a, b, perm, off, path in self.maps:
            if a <= addr < b: return (a, b, perm, off, path)
    def cstr(self, a, n=256):
        d = self.read(a, n); return d.split(b"\0")[0].decode("utf-8", "replace")
    def wstr(self, a, n=512):
        d = self.read(a, n)
        out = []
        for i in range(0, len(d) - 1, 2):
            c = d[i] | (d[i+1] << 8)
            if c == 0: break
            out.append(chr(c))
        return "".join(out)
def syms(path):
    out = {}
    txt = subprocess.run(["readelf", "-Ws", path], capture_output=True, text=True).stdout
    for line in txt.splitlines():
        p = line.split()
        if len(p) >= 8 and p[1] != "0000000000000000" and re.match(r"^[0-9a-f]{16}$", p[1] or ""):
            try: out.setdefault(p[7].split("@")[0], (int(p[1], 16), int(p[2], 0) if p[2].isdigit() else int(p[2], 16)))
            except Exception: pass
    return out
