/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The ioctl ABI of /dev/zufs now lives in the generated header
 * zus-api/include/zus_api.h (struct zufs_ioc_*, ZUFS_IOC_*), from
 * zus-api/src/kabi.rs. This file only forwards to it for the test programs
 * that still include it (tests/zufs-dbgop.c); include "zus_api.h" instead,
 * then delete this file.
 */
#ifndef ZUFS_KABI_H
#define ZUFS_KABI_H

#include "../../zus-api/include/zus_api.h"

#endif /* ZUFS_KABI_H */
