/* TCP transport: server threads and per-peer client streams (see
 * transport_tcp.c; the engine-facing functions are in engine_int.h). */
#ifndef MCS_TRANSPORT_TCP_H
#define MCS_TRANSPORT_TCP_H
#endif
