"""Seccomp user-notification client for the live tests: installs a filter notifying
sysinfo(2) in a thread, hands the listener fd to a daemon socket the way runc does
(listenerPath protocol), then makes the call from that thread. x86_64 only.

  notify.py SOCK call normal|readonly|file [--file PATH] [--as-nobody] [--bad-message]
  notify.py SOCK hand N        hand N listeners (one thread each), print "ready", wait for stdin
"""
import ctypes, json, os, socket, struct, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
SYS_seccomp, SYS_sysinfo = 317, 99
PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS = 1, 2, 2, 0x20

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

FILTER = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in [
    (0x20, 0, 0, 0),                 # ld  [nr]
    (0x15, 0, 1, SYS_sysinfo),       # jeq sysinfo
    (0x06, 0, 0, 0x7FC00000),        # ret USER_NOTIF
    (0x06, 0, 0, 0x7FFF0000),        # ret ALLOW
]))
PROG = Prog(4, ctypes.addressof(FILTER))

def listener():
    """Installs the filter on the calling thread; returns the listener fd."""
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl")
    fd = libc.syscall(SYS_seccomp, 1, 8, ctypes.byref(PROG))  # SET_MODE_FILTER, NEW_LISTENER
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp")
    return fd

def hand(sock_path, fd, bad=False):
    msg = {"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": os.getpid(), "metadata": "",
           "state": {"ociVersion": "1.0.2", "id": "notify-%d-%d" % (os.getpid(), fd), "status": "creating",
                     "pid": os.getpid(), "bundle": "/"}}
    if bad:
        del msg["ociVersion"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    try:
        socket.send_fds(s, [json.dumps(msg).encode()], [fd])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon hung up first: refused (its peer check runs at accept)
    s.close()
    os.close(fd)

def sysinfo(addr):
    r = libc.syscall(SYS_sysinfo, ctypes.c_void_p(addr))
    return r, (ctypes.get_errno() if r < 0 else 0)

def call(sock_path, mode, opts):
    box = {}
    ready, go = threading.Event(), threading.Event()
    def thread():
        box["fd"] = listener()
        ready.set()
        go.wait()
        out = {}
        if mode == "normal":
            buf = ctypes.create_string_buffer(112)
            out["ret"], out["errno"] = sysinfo(ctypes.addressof(buf))
            total, = struct.unpack_from("<Q", buf.raw, 32)
            unit, = struct.unpack_from("<I", buf.raw, 104)
            out["total"] = total * max(unit, 1)
        elif mode == "readonly":
            a = libc.mmap(None, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            out["ret"], out["errno"] = sysinfo(a)
            out["zeros"] = ctypes.string_at(a, 112) == bytes(112)
        elif mode == "file":
            fd = os.open(opts["file"], os.O_RDONLY)  # MAP_PRIVATE: writable without write access
            a = libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
            print(json.dumps({"calling": True}), flush=True)
            out["ret"], out["errno"] = sysinfo(a)
        box["out"] = out
    t = threading.Thread(target=thread, daemon=True)
    t.start()
    ready.wait()
    if opts.get("as_nobody"):
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    hand(sock_path, box["fd"], bad=opts.get("bad", False))
    go.set()
    t.join()
    print(json.dumps(box["out"]), flush=True)

def hand_many(sock_path, n):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    threading.stack_size(256 * 1024)
    fds, lock, done = [], threading.Lock(), threading.Event()
    def thread():
        fd = listener()
        with lock:
            fds.append(fd)
        done.wait()
    ts = [threading.Thread(target=thread, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    while len(fds) < n:
        threading.Event().wait(0.01)
    for fd in fds:
        hand(sock_path, fd)
    print("ready", flush=True)
    sys.stdin.read()
    done.set()

if __name__ == "__main__":
    sock, cmd = sys.argv[1], sys.argv[2]
    if cmd == "hand":
        hand_many(sock, int(sys.argv[3]))
    else:
        a = sys.argv[4:]
        opts = {"as_nobody": "--as-nobody" in a, "bad": "--bad-message" in a}
        if "--file" in a:
            opts["file"] = a[a.index("--file") + 1]
        call(sock, sys.argv[3], opts)
