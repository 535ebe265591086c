"""Resolve, connect (blocking, or asyncio with "async"), send ping, print reply."""
import asyncio
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "block"
try:
    addr = socket.gethostbyname(host)
except OSError as e:
    print("resolve:", e)
    sys.exit(2)
print("resolved:", addr)
if mode == "async":
    async def main():
        r, w = await asyncio.open_connection(host, port)
        print("peer:", w.get_extra_info("peername")[0])
        print("local:", w.get_extra_info("sockname")[0])
        w.write(b"ping\n")
        print("reply:", (await r.readline()).decode().strip())
        w.close()
    try:
        asyncio.run(main())
    except OSError as e:
        print("connect:", e.errno and __import__("errno").errorcode[e.errno])
        sys.exit(3)
else:
    try:
        s = socket.create_connection((host, port), timeout=10)
    except OSError as e:
        print("connect:", e.errno and __import__("errno").errorcode[e.errno])
        sys.exit(3)
    print("peer:", s.getpeername()[0])
    print("local:", s.getsockname()[0])
    s.sendall(b"ping\n")
    print("reply:", s.makefile().readline().strip())
