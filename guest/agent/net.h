/* Guest networking: the loopback interface at boot, eth0 from HELLO's NET. */
#ifndef ROOST_NET_H
#define ROOST_NET_H

#include <stdint.h>

/* Brings up lo: programs expect 127.0.0.1 to exist. */
void loopback_up(void);
/* Configures eth0 (MAC, MTU, address, default route) and the command root's
 * resolver from a ROOST_NET_LEN-byte NET value; the same value again changes
 * nothing. Failures are logged. */
void net_configure(const uint8_t *v);

#endif
