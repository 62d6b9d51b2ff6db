import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createUserNetFilter, UserNet, USER_NET } from './index.js';

/*
 * The user-mode stack against the real Linux TCP/IP stack: a network
 * namespace with a TAP device configured as the guest (10.0.2.15/24, default
 * route via 10.0.2.2), whose frames a small C shim copies to and from a unix
 * socket with QEMU's stream framing. Traffic stays in the namespace and on
 * the host's 127.0.0.1. Needs root, /dev/net/tun, iproute2, gcc, python3.
 */

const run = promisify(execFile);
const NS = `roost-ut-${process.pid}`;
const TAP = 'rtap0';
const GUEST_MAC = '52:54:00:12:34:56';
const BULK = 32 * 1024 * 1024;

function available(): string | null {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return 'not root on Linux';
  if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  const onPath = (tool: string) => (process.env.PATH ?? '').split(':').some((d) => d !== '' && existsSync(join(d, tool)));
  for (const tool of ['ip', 'gcc', 'python3', 'busybox']) if (!onPath(tool)) return `no ${tool}`;
  return null;
}
const missing = available();

const SHIM_C = String.raw`
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
/* TAP <-> unix socket, frames prefixed with their 4-byte big-endian length. */
static int tap, sock;
static int full(int fd, unsigned char *p, size_t n, int writing) {
  while (n > 0) {
    ssize_t r = writing ? write(fd, p, n) : read(fd, p, n);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}
static void *tap_to_sock(void *arg) {
  static unsigned char buf[4 + 65536 + 64];
  (void)arg;
  for (;;) {
    ssize_t n = read(tap, buf + 4, sizeof buf - 4);
    if (n <= 0) exit(0);
    uint32_t be = htonl((uint32_t)n);
    memcpy(buf, &be, 4);
    if (full(sock, buf, (size_t)n + 4, 1)) exit(0);
  }
}
int main(int argc, char **argv) {
  static unsigned char buf[65536 + 64];
  struct ifreq ifr;
  struct sockaddr_un addr;
  pthread_t thread;
  if (argc != 3) return 2;
  tap = open("/dev/net/tun", O_RDWR);
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (tap < 0 || ioctl(tap, TUNSETIFF, &ifr) < 0) { perror("tap"); return 1; }
  sock = socket(AF_UNIX, SOCK_STREAM, 0);
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, argv[2], sizeof addr.sun_path - 1);
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
  pthread_create(&thread, NULL, tap_to_sock, NULL);
  for (;;) {
    uint32_t be, n;
    if (full(sock, (unsigned char *)&be, 4, 0)) return 0;
    n = ntohl(be);
    if (n > sizeof buf || full(sock, buf, n, 0)) return 0;
    if (write(tap, buf, n) < 0) { /* dropped, like a NIC would */ }
  }
}
`;

/*
 * The bulk protocol, spoken by Python in the namespace and Node on the host:
 * 'U' + u64 length + bytes -> the receiver answers the SHA-256 of the bytes;
 * 'D' + u64 length -> the receiver sends that many bytes and closes. The
 * bytes are a random block (shared through a file) repeated.
 */
const PY_COMMON = String.raw`
import hashlib, json, socket, struct, sys, time
block = open(sys.argv[1], 'rb').read()
def stream(n):
    while n > 0:
        piece = block[:n]
        n -= len(piece)
        yield piece
def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b: raise EOFError('closed')
        out += b
    return bytes(out)
def serve_one(s):
    cmd = recv_exact(s, 9)
    n = struct.unpack('>Q', cmd[1:])[0]
    if cmd[:1] == b'U':
        h = hashlib.sha256(); left = n
        while left > 0:
            b = s.recv(min(left, 1 << 20))
            if not b: raise EOFError('closed early')
            h.update(b); left -= len(b)
        s.sendall(h.digest())
    else:
        for piece in stream(n): s.sendall(piece)
    s.close()
`;

const PY_CLIENT = `${PY_COMMON}
mode, host, port, n = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.create_connection((host, port), timeout=60)
start = time.time()
s.sendall(mode.encode() + struct.pack('>Q', n))
if mode == 'U':
    for piece in stream(n): s.sendall(piece)
    digest = recv_exact(s, 32).hex()
    got = n
else:
    h = hashlib.sha256(); got = 0
    while True:
        b = s.recv(1 << 20)
        if not b: break
        h.update(b); got += len(b)
    digest = h.hexdigest()
print(json.dumps({'seconds': time.time() - start, 'digest': digest, 'bytes': got}))
`;

const PY_SERVER = `${PY_COMMON}
port, count = int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('0.0.0.0', port)); srv.listen(8)
print('listening', flush=True)
for _ in range(count):
    c, _ = srv.accept()
    serve_one(c)
`;

const PY_CONNECT = String.raw`
import errno, json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.settimeout(10)
start = time.time()
try:
    s.connect((host, port)); result = 'connected'
except OSError as e:
    result = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
print(json.dumps({'result': result, 'seconds': time.time() - start}))
`;

const PY_UDP = String.raw`
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(65535)[0].decode())
`;

const PY_DNS = String.raw`
import socket, struct, sys
name = sys.argv[1]
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, ('10.0.2.3', 53))
r = s.recvfrom(512)[0]
rcode = r[3] & 15; ancount = struct.unpack('>H', r[6:8])[0]
print(rcode, socket.inet_ntoa(r[-4:]) if ancount else '-')
`;

describe.skipIf(missing !== null)('UserNet with the Linux TCP stack in a network namespace', () => {
  let dir = '';
  let shim: ChildProcess | null = null;
  let linkServer: Server | null = null;
  let bulkServer: Server | null = null;
  let udpEcho: UdpSocket | null = null;
  let net: UserNet | null = null;
  let blockPath = '';
  let block = Buffer.alloc(0);
  let bulkPort = 0;
  let closedPort = 0;
  let udpPort = 0;
  const denied: unknown[] = [];
  const logs: string[] = [];

  const inNs = async (args: string[], timeout = 120_000) => (await run('ip', ['netns', 'exec', NS, ...args], { timeout, maxBuffer: 1 << 20 })).stdout.trim();
  const py = (script: string, ...args: string[]) => inNs(['python3', '-c', script, ...args]);
  const expected = (n: number) => {
    const h = createHash('sha256');
    for (let left = n; left > 0; left -= block.length) h.update(left >= block.length ? block : block.subarray(0, left));
    return h.digest('hex');
  };
  const policy = (allow: string[], deny: string[] = []) => createUserNetFilter({ default: 'deny', allow, deny });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'roost-netns-'));
    writeFileSync(join(dir, 'tapshim.c'), SHIM_C);
    await run('gcc', ['-O2', '-o', join(dir, 'tapshim'), join(dir, 'tapshim.c'), '-lpthread']);
    block = randomBytes(1_000_003);
    blockPath = join(dir, 'block');
    writeFileSync(blockPath, block);

    // Host side: a bulk server, a closed port and a UDP echo server, all on 127.0.0.1.
    bulkServer = createServer((s) => serveBulk(s, block));
    await new Promise<void>((r) => bulkServer!.listen(0, '127.0.0.1', r));
    bulkPort = (bulkServer.address() as { port: number }).port;
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    closedPort = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    udpEcho = createSocket('udp4');
    udpEcho.on('message', (msg, rinfo) => udpEcho!.send(Buffer.concat([Buffer.from('echo:'), msg]), rinfo.port, rinfo.address));
    await new Promise<void>((r) => udpEcho!.bind(0, '127.0.0.1', r));
    udpPort = udpEcho.address().port;

    net = new UserNet({
      guestMac: GUEST_MAC,
      filter: policy(['host'], [`host:${closedPort + 1}`]),
      onDenied: (d) => denied.push(d),
      log: (m) => logs.push(m),
      resolve4: async (name) => {
        if (name === 'allowed.test') return [{ address: '192.0.2.10', ttl: 30 }];
        throw Object.assign(new Error('no such name'), { code: 'ENOTFOUND' });
      },
    });
    const sockPath = join(dir, 'net.sock');
    const attached = new Promise<void>((resolve) => {
      linkServer = createServer((s) => {
        net!.attach(s);
        resolve();
      });
      linkServer.listen(sockPath);
    });
    await new Promise<void>((r) => linkServer!.once('listening', r));

    await run('ip', ['netns', 'add', NS]);
    shim = spawn('ip', ['netns', 'exec', NS, join(dir, 'tapshim'), TAP, sockPath], { stdio: ['ignore', 'ignore', 'inherit'] });
    await attached;
    await inNs(['ip', 'link', 'set', 'lo', 'up']);
    await inNs(['ip', 'link', 'set', TAP, 'address', GUEST_MAC, 'mtu', String(USER_NET.mtu), 'up']);
    await inNs(['ip', 'addr', 'add', `${USER_NET.guest}/${USER_NET.prefix}`, 'dev', TAP]);
    await inNs(['ip', 'route', 'add', 'default', 'via', USER_NET.gateway]);
  }, 120_000);

  afterAll(async () => {
    net?.close();
    if (shim?.pid !== undefined && shim.exitCode === null) shim.kill('SIGKILL');
    // The shim runs under `ip netns exec` (which execs it, same PID); deleting the namespace after it exits removes the TAP.
    await run('ip', ['netns', 'del', NS]).catch(() => {});
    linkServer?.close();
    bulkServer?.close();
    udpEcho?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers ping on the gateway and DNS addresses', async () => {
    const out = await inNs(['busybox', 'ping', '-c', '2', '-W', '2', USER_NET.gateway]);
    expect(out).toMatch(/2 packets received/);
    expect(await inNs(['busybox', 'ping', '-c', '1', '-W', '2', USER_NET.dns])).toMatch(/1 packets received/);
  });

  it('leases 10.0.2.15 to a real DHCP client', async () => {
    // busybox prints its messages on stderr; -s /bin/true: do not touch the interface.
    const out = await run('ip', ['netns', 'exec', NS, 'busybox', 'udhcpc', '-i', TAP, '-n', '-q', '-f', '-t', '3', '-T', '1', '-s', '/bin/true'], {
      timeout: 30_000,
    }).then(
      (r) => r.stdout + r.stderr,
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    expect(out).toMatch(/lease of 10\.0\.2\.15 obtained/);
  });

  it('resolves host.roost.internal and allowed names, NXDOMAIN for the rest', async () => {
    expect(await py(PY_DNS, 'host.roost.internal')).toBe('0 10.0.2.2');
    expect(await py(PY_DNS, 'unlisted.test')).toBe('3 -');
    expect(denied).toContainEqual({ protocol: 'dns', name: 'unlisted.test' });
  });

  it(`moves ${BULK >> 20} MiB each way between the namespace and the host's 127.0.0.1 through 10.0.2.2`, async () => {
    const up = JSON.parse(await py(PY_CLIENT, blockPath, 'U', USER_NET.gateway, String(bulkPort), String(BULK))) as { seconds: number; digest: string };
    expect(up.digest).toBe(expected(BULK));
    const down = JSON.parse(await py(PY_CLIENT, blockPath, 'D', USER_NET.gateway, String(bulkPort), String(BULK))) as {
      seconds: number;
      digest: string;
      bytes: number;
    };
    expect(down.bytes).toBe(BULK);
    expect(down.digest).toBe(expected(BULK));
    console.log(`[netns] guest->host ${mbps(BULK, up.seconds)} MB/s, host->guest ${mbps(BULK, down.seconds)} MB/s (${BULK >> 20} MiB each)`);
  }, 120_000);

  it('moves data both ways through connectTcp (a forwarded port)', async () => {
    const server = spawn('ip', ['netns', 'exec', NS, 'python3', '-c', PY_SERVER, blockPath, '7000', '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
      // host -> guest
      let start = performance.now();
      const up = net!.connectTcp(7000);
      await new Promise<void>((resolve, reject) => {
        up.once('connect', resolve);
        up.once('error', reject);
      });
      const digest = new Promise<string>((resolve, reject) => {
        const parts: Buffer[] = [];
        up.on('data', (b: Buffer) => parts.push(b));
        up.on('end', () => resolve(Buffer.concat(parts).toString('hex')));
        up.on('error', reject);
      });
      const header = Buffer.alloc(9);
      header.write('U');
      header.writeBigUInt64BE(BigInt(BULK), 1);
      await writeAll(up, header, BULK, block);
      up.end();
      expect(await digest).toBe(expected(BULK));
      const upSeconds = (performance.now() - start) / 1000;
      // guest -> host
      start = performance.now();
      const down = net!.connectTcp(7000);
      down.on('connect', () => {
        const h = Buffer.alloc(9);
        h.write('D');
        h.writeBigUInt64BE(BigInt(BULK), 1);
        down.write(h);
      });
      const got = await new Promise<{ bytes: number; digest: string }>((resolve, reject) => {
        const hash = createHash('sha256');
        let bytes = 0;
        down.on('data', (b: Buffer) => {
          hash.update(b);
          bytes += b.length;
        });
        down.on('end', () => resolve({ bytes, digest: hash.digest('hex') }));
        down.on('error', reject);
      });
      down.end();
      expect(got.bytes).toBe(BULK);
      expect(got.digest).toBe(expected(BULK));
      const downSeconds = (performance.now() - start) / 1000;
      console.log(`[netns] forwarded port: host->guest ${mbps(BULK, upSeconds)} MB/s, guest->host ${mbps(BULK, downSeconds)} MB/s`);
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
    }
  }, 120_000);

  it('refuses a forwarded connection to a closed guest port with ECONNREFUSED', async () => {
    const s = net!.connectTcp(7999);
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => s.once('error', resolve));
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('relays UDP to the host and back', async () => {
    expect(await py(PY_UDP, USER_NET.gateway, String(udpPort), 'hello')).toBe('echo:hello');
  });

  it('fails denied connections at once with EHOSTUNREACH, refused ones with ECONNREFUSED', async () => {
    const outside = JSON.parse(await py(PY_CONNECT, '192.0.2.1', '80')) as { result: string; seconds: number };
    expect(outside.result).toBe('EHOSTUNREACH');
    expect(outside.seconds).toBeLessThan(1);
    const deniedPort = JSON.parse(await py(PY_CONNECT, USER_NET.gateway, String(closedPort + 1))) as { result: string; seconds: number };
    expect(deniedPort.result).toBe('EHOSTUNREACH');
    expect(denied).toContainEqual({ protocol: 'tcp', address: '192.0.2.1', port: 80 });
    const refused = JSON.parse(await py(PY_CONNECT, USER_NET.gateway, String(closedPort))) as { result: string };
    expect(refused.result).toBe('ECONNREFUSED');
    expect(net!.stats.denied).toBeGreaterThanOrEqual(3);
  });

  it('counts frames both ways and leaves no flows behind', async () => {
    const stats = net!.stats;
    expect(stats.packetsIn).toBeGreaterThan(100);
    expect(stats.packetsOut).toBeGreaterThan(100);
    expect(stats.bytesIn).toBeGreaterThan(BULK * 2);
    expect(stats.bytesOut).toBeGreaterThan(BULK * 2);
    for (let i = 0; i < 50 && net!.flowCounts.tcp > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(net!.flowCounts.tcp).toBe(0);
    expect(logs.filter((l) => /failed/.test(l))).toEqual([]);
  });
});

function mbps(bytes: number, seconds: number): string {
  return (bytes / seconds / 1e6).toFixed(0);
}

function serveBulk(s: Socket, block: Buffer): void {
  s.on('error', () => {});
  let header = Buffer.alloc(0);
  let hash: ReturnType<typeof createHash> | null = null;
  let left = 0;
  const onData = (chunk: Buffer) => {
    if (hash === null) {
      header = Buffer.concat([header, chunk]);
      if (header.length < 9) return;
      const n = Number(header.readBigUInt64BE(1));
      if (header.subarray(0, 1).toString() === 'D') {
        s.off('data', onData);
        void writeAll(s, Buffer.alloc(0), n, block).then(() => s.end());
        return;
      }
      hash = createHash('sha256');
      left = n;
      chunk = header.subarray(9);
    }
    const take = chunk.subarray(0, left);
    hash.update(take);
    left -= take.length;
    if (left === 0) s.end(hash.digest());
  };
  s.on('data', onData);
}

/** Writes `header`, then `n` bytes of `block` repeated, honouring backpressure. */
async function writeAll(s: NodeJS.WritableStream, header: Buffer, n: number, block: Buffer): Promise<void> {
  if (header.length > 0 && !s.write(header)) await new Promise((r) => s.once('drain', r));
  for (let left = n; left > 0;) {
    const piece = left >= block.length ? block : block.subarray(0, left);
    left -= piece.length;
    if (!s.write(piece)) await new Promise((r) => s.once('drain', r));
  }
}
