// Resolve through dns.lookup (getaddrinfo in libuv's pool), connect with net (non-blocking
// connect in libuv's epoll loop), send ping, print reply.
const net = require("net");
const dns = require("dns");
const [host, port] = process.argv.slice(2);
dns.lookup(host, { family: 4 }, (err, addr) => {
  if (err) { console.log("resolve:", err.code); process.exit(2); }
  console.log("resolved:", addr);
  const s = net.connect({ host, port: Number(port) }, () => {
    console.log("peer:", s.remoteAddress);
    console.log("local:", s.localAddress);
    s.write("ping\n");
  });
  let buf = "";
  s.on("data", (d) => {
    buf += d;
    if (buf.includes("\n")) { console.log("reply:", buf.trim()); s.end(); }
  });
  s.on("error", (e) => { console.log("connect:", e.code); process.exit(3); });
});
