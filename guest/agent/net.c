/* Guest networking: see net.h. */
#include "net.h"

#include "agent.h"
#include "boot.h"
#include "proto.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* networking: eth0 as the host's HELLO describes it */

static uint8_t net_applied[ROOST_NET_LEN]; /* the last configuration applied */
static bool net_applied_ok;

static bool ifreq_ioctl(int s, unsigned long req, struct ifreq *ifr, const char *what)
{
	if (ioctl(s, req, ifr) == 0)
		return true;
	logmsg("network: %s on %s: %s", what, ifr->ifr_name, strerror(errno));
	return false;
}

static void put_sin(struct sockaddr *sa, const uint8_t *addr)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, addr, 4);
	memcpy(sa, &sin, sizeof sin);
}

/* Writes path (below the command root) atomically, replacing a symlink
 * rather than following it: the guest's files are its own, but the agent
 * should not write through a link an image left there. */
static void write_guest_file(const char *path, const char *text)
{
	/* Unchanged: left alone (no write on every HELLO; a full disk stays as it was). */
	struct stat st;
	char old[256];
	size_t n = strlen(text);
	if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == n &&
	    n < sizeof old) {
		int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t got = read(fd, old, n);
			close(fd);
			if (got == (ssize_t)n && memcmp(old, text, n) == 0)
				return;
		}
	}
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s.roost-tmp", path) >= (int)sizeof tmp)
		return;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		if (errno != ENOENT) /* an image without /etc */
			logmsg("network: %s: %s", tmp, strerror(errno));
		return;
	}
	bool ok = write(fd, text, n) == (ssize_t)n;
	if (close(fd) < 0)
		ok = false;
	if (!ok || rename(tmp, path) < 0) {
		logmsg("network: writing %s failed", path);
		unlink(tmp);
	}
}

/* Configures eth0 from HELLO's NET value: MAC (a restored copy gets its
 * own), MTU, address, default route, and the resolver of the command root.
 * Applied again only when it changes. Failures are logged: the host sees
 * them as a network that does not answer. */
void net_configure(const uint8_t *v)
{
	if (net_applied_ok && memcmp(v, net_applied, ROOST_NET_LEN) == 0)
		return;
	const uint8_t *mac = v, *addr = v + 8, *gw = v + 13, *dns = v + 17;
	unsigned mtu = (unsigned)v[6] << 8 | v[7], prefix = v[12];
	if (prefix == 0 || prefix > 30 || mtu < 576) {
		logmsg("network: bad configuration (prefix %u, mtu %u)", prefix, mtu);
		return;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("network: socket: %s", strerror(errno));
		return;
	}
	bool ok = true;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "eth0", 5);
	ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
	memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
	ok &= ifreq_ioctl(s, SIOCSIFHWADDR, &ifr, "SIOCSIFHWADDR");
	ifr.ifr_mtu = (int)mtu;
	ok &= ifreq_ioctl(s, SIOCSIFMTU, &ifr, "SIOCSIFMTU");
	put_sin(&ifr.ifr_addr, addr);
	ok &= ifreq_ioctl(s, SIOCSIFADDR, &ifr, "SIOCSIFADDR");
	uint32_t maskv = htonl(0xffffffffu << (32 - prefix));
	put_sin(&ifr.ifr_netmask, (const uint8_t *)&maskv);
	ok &= ifreq_ioctl(s, SIOCSIFNETMASK, &ifr, "SIOCSIFNETMASK");
	if (ifreq_ioctl(s, SIOCGIFFLAGS, &ifr, "SIOCGIFFLAGS")) {
		ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
		ok &= ifreq_ioctl(s, SIOCSIFFLAGS, &ifr, "SIOCSIFFLAGS");
	} else {
		ok = false;
	}
	/* The default route: an old one (a restored copy's) goes first. */
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	put_sin(&rt.rt_dst, (const uint8_t[4]){0, 0, 0, 0});
	put_sin(&rt.rt_genmask, (const uint8_t[4]){0, 0, 0, 0});
	(void)ioctl(s, SIOCDELRT, &rt);
	put_sin(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = ifr.ifr_name;
	if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
		logmsg("network: default route: %s", strerror(errno));
		ok = false;
	}
	close(s);
	if (root_ok) {
		char text[64];
		snprintf(text, sizeof text, "nameserver %u.%u.%u.%u\n", dns[0], dns[1], dns[2],
			 dns[3]);
		write_guest_file(CMD_ROOT "/etc/resolv.conf", text);
		struct stat st;
		if (lstat(CMD_ROOT "/etc/hosts", &st) < 0 && errno == ENOENT)
			write_guest_file(CMD_ROOT "/etc/hosts",
					 "127.0.0.1\tlocalhost roost\n::1\tlocalhost\n");
	}
	memcpy(net_applied, v, ROOST_NET_LEN);
	net_applied_ok = ok;
}

/* Brings up the loopback interface: programs expect 127.0.0.1 to exist. */
void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("loopback: socket: %s", strerror(errno));
		return;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "lo", 3);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		logmsg("loopback: SIOCGIFFLAGS: %s", strerror(errno));
	} else {
		ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			logmsg("loopback: SIOCSIFFLAGS: %s", strerror(errno));
	}
	close(s);
}
