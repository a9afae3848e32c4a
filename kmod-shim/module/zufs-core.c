// SPDX-License-Identifier: GPL-2.0
/*
 * zufs-core.c - /dev/zufs: the kernel channel set shared with zusd, the ZT
 * ioctls, and zufs_dispatch(), which sends one op to zusd and waits for it.
 *
 * The channel set has zus-api's own layout (chan.rs), so zusd serves it with
 * the code that serves its user-space clients. What the kernel decides, it
 * decides from kernel memory: which caller owns a slot, which op a reply
 * belongs to, whether the session is alive. From the shared memory it only
 * reads the slot state (to find DONE replies) and, once each, the reply
 * header fields, which it checks before it uses them: zusd is trusted less
 * than the kernel.
 */
#define pr_fmt(fmt) "zufs: " fmt

#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/slab.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/sched/signal.h>
#include <linux/cred.h>
#include <linux/wait.h>
#include <linux/kref.h>
#include <linux/rcupdate.h>
#include <linux/uaccess.h>
#include <linux/topology.h>
#include <linux/nodemask.h>
#include <linux/string.h>

#include "zufs.h"
#include "zufs-dax.h"

/*
 * The ZT reaps its replies in ZUFS_IOC_WAIT just before it sleeps there, so
 * it wakes the callers with WF_SYNC: the scheduler then keeps a caller on the
 * ZT's CPU (which is the caller's own) instead of moving it to an idle CPU,
 * whose wake-up costs far more than the op on a virtual machine.
 */
static bool sync_wake = true;
module_param(sync_wake, bool, 0644);
MODULE_PARM_DESC(sync_wake, "wake callers with WF_SYNC from the ZT (default Y)");

/* The largest errno a server may return (EHWPOISON); others become EIO. */
#define ZUFS_MAX_ERRNO		133

#define ZUFS_LANES_OFFSET	(ZUFS_SET_PAGE + ZUS_DAX_READER_SLOTS * ZUS_CACHE_LINE)

/*
 * Kernel-private slot states. Ownership lives here, not in the shared state
 * word, which zusd may overwrite at any time.
 */
enum {
	ZK_FREE,
	ZK_CLAIMED,	/* one caller fills the slot in */
	ZK_SUBMITTED,	/* zusd has the op */
	ZK_DONE,	/* the lane's ZT reported DONE; the caller reads the reply */
	ZK_ABANDONED,	/* the caller was killed; the ZT frees the slot at DONE */
};

struct zufs_kslot {
	atomic_t state;
	int done_cpu;
	wait_queue_head_t wq;
};

struct zufs_lane {
	struct task_struct *zt;		/* the registered ZT; under zufs_lock */
	bool has_zt;
	int zt_cpu;			/* the CPU it registered for */
	int node;
	unsigned int kick_seen;		/* only the lane's ZT touches it */
	wait_queue_head_t zt_wq;
	struct zufs_kslot *kslots;
};

struct zufs_session {
	struct kref kref;
	void *mem;
	size_t size;
	u32 ncpu;
	u32 nslots;
	u32 window;
	size_t lane_size;
	size_t ctl_size;	/* lane header and slots, page aligned */
	pid_t server_tgid;
	bool dead;		/* the server's fd is gone: every op fails */
	bool broken;		/* BREAK: no new ops, the ZTs leave */
	atomic_t kick_seq;
	atomic64_t seq;
	wait_queue_head_t free_wq;	/* callers waiting for a free slot */
	struct zufs_kslot *kslots;
	struct zufs_lane lanes[];
};

static DEFINE_MUTEX(zufs_lock);		/* HELLO, ZT_INIT, session end */
static struct zufs_session __rcu *zufs_cur;

static void *zufs_lane_mem(struct zufs_session *s, u32 lane)
{
	return s->mem + ZUFS_LANES_OFFSET + (size_t)lane * s->lane_size;
}

static struct zus_slot *zufs_slot(struct zufs_session *s, u32 lane, u32 i)
{
	return zufs_lane_mem(s, lane) + sizeof(struct zus_lane_header) +
	       (size_t)i * ZUS_SLOT_SIZE;
}

static void *zufs_window(struct zufs_session *s, u32 lane, u32 i)
{
	return zufs_lane_mem(s, lane) + s->ctl_size + (size_t)i * s->window;
}

static void zufs_session_free(struct kref *kref)
{
	struct zufs_session *s = container_of(kref, struct zufs_session, kref);
	u32 i;

	for (i = 0; i < s->ncpu; i++)
		if (s->lanes[i].zt)
			put_task_struct(s->lanes[i].zt);
	vfree(s->mem);
	kfree(s->kslots);
	kfree(s);
}

static struct zufs_session *zufs_get_session(void)
{
	struct zufs_session *s;

	rcu_read_lock();
	s = rcu_dereference(zufs_cur);
	if (s && !kref_get_unless_zero(&s->kref))
		s = NULL;
	rcu_read_unlock();
	return s;
}

static void zufs_put_session(struct zufs_session *s)
{
	kref_put(&s->kref, zufs_session_free);
}

static void zufs_wake_zts(struct zufs_session *s)
{
	u32 i;

	for (i = 0; i < s->ncpu; i++)
		wake_up(&s->lanes[i].zt_wq);
}

/* ----- slots ----- */

static void zufs_free_slot(struct zufs_session *s, u32 lane, u32 i)
{
	struct zufs_kslot *ks = &s->lanes[lane].kslots[i];

	WRITE_ONCE(zufs_slot(s, lane, i)->state, ZUS_SLOT_STATE_FREE);
	atomic_set_release(&ks->state, ZK_FREE);
	if (wq_has_sleeper(&s->free_wq))
		wake_up(&s->free_wq);
}

static int zufs_claim_in_lane(struct zufs_session *s, u32 lane)
{
	struct zufs_kslot *ks = s->lanes[lane].kslots;
	u32 i;

	for (i = 0; i < s->nslots; i++)
		if (atomic_read(&ks[i].state) == ZK_FREE &&
		    atomic_cmpxchg(&ks[i].state, ZK_FREE, ZK_CLAIMED) == ZK_FREE)
			return i;
	return -1;
}

/*
 * Claims a free slot: in @home's lane, else in another lane of the same NUMA
 * node, else, when that node has no ZT at all, in any lane with a ZT.
 * Returns 1 with *lanep and *slotp set, 0 when every eligible lane is full,
 * -EIO when no lane has a ZT.
 */
static int zufs_try_claim(struct zufs_session *s, u32 home, u32 *lanep,
			  u32 *slotp)
{
	int node = s->lanes[home].node;
	bool node_has_zt = false, any_zt = false;
	u32 n, lane;
	int i;

	for (n = 0; n < s->ncpu; n++) {
		lane = (home + n) % s->ncpu;
		if (!READ_ONCE(s->lanes[lane].has_zt) ||
		    s->lanes[lane].node != node)
			continue;
		node_has_zt = true;
		i = zufs_claim_in_lane(s, lane);
		if (i >= 0)
			goto found;
	}
	if (node_has_zt)
		return 0;
	for (n = 0; n < s->ncpu; n++) {
		lane = (home + n) % s->ncpu;
		if (!READ_ONCE(s->lanes[lane].has_zt))
			continue;
		any_zt = true;
		i = zufs_claim_in_lane(s, lane);
		if (i >= 0)
			goto found;
	}
	return any_zt ? 0 : -EIO;
found:
	*lanep = lane;
	*slotp = i;
	return 1;
}

/*
 * The lane's ZT reports the replies zusd finished: each slot a caller waits
 * on whose shared state reads DONE completes (or, abandoned, is freed).
 */
static u32 zufs_reap(struct zufs_session *s, u32 lane)
{
	struct zufs_kslot *ks = s->lanes[lane].kslots;
	u32 i, n = 0;
	int st;

	for (i = 0; i < s->nslots; i++) {
		st = atomic_read_acquire(&ks[i].state);
		if (st != ZK_SUBMITTED && st != ZK_ABANDONED)
			continue;
		if (smp_load_acquire(&zufs_slot(s, lane, i)->state) !=
		    ZUS_SLOT_STATE_DONE)
			continue;
		ks[i].done_cpu = raw_smp_processor_id();
		if (atomic_cmpxchg(&ks[i].state, ZK_SUBMITTED, ZK_DONE) ==
		    ZK_SUBMITTED) {
			if (READ_ONCE(sync_wake))
				wake_up_sync(&ks[i].wq);
			else
				wake_up(&ks[i].wq);
			n++;
		} else if (atomic_cmpxchg(&ks[i].state, ZK_ABANDONED,
					  ZK_CLAIMED) == ZK_ABANDONED) {
			zufs_free_slot(s, lane, i);
		}
	}
	return n;
}

static u32 zufs_lane_submitted(struct zufs_session *s, u32 lane)
{
	u32 i, n = 0;

	for (i = 0; i < s->nslots; i++)
		if (READ_ONCE(zufs_slot(s, lane, i)->state) ==
		    ZUS_SLOT_STATE_SUBMITTED)
			n++;
	return n;
}

/* ----- dispatch ----- */

/* Reads the reply header once, checks it, copies the reply out. */
static s64 zufs_read_reply(struct zufs_session *s, u32 lane, u32 i, u64 seq,
			   struct zufs_op *op)
{
	struct zus_slot *slot = zufs_slot(s, lane, i);
	s64 result = READ_ONCE(slot->hdr.result);
	u32 out_len = READ_ONCE(slot->hdr.out_len);
	u32 data_len = READ_ONCE(slot->hdr.data_len);
	u64 rseq = READ_ONCE(slot->hdr.seq);
	size_t data_max = op->data_out ? min_t(size_t, op->data_out_size,
					       s->window) : 0;

	if (rseq != seq) {
		pr_warn_ratelimited("lane %u slot %u: reply for op %llu, sent op %llu\n",
				    lane, i, rseq, seq);
		return -EIO;
	}
	if (result < 0) {
		if (result < -ZUFS_MAX_ERRNO) {
			pr_warn_ratelimited("op %u: result %lld is no errno\n",
					    op->opcode, result);
			return -EIO;
		}
		return result;
	}
	if (result > op->result_max || out_len > ZUS_PAYLOAD_SIZE ||
	    out_len > op->reply_size || out_len < op->reply_min ||
	    data_len > data_max) {
		pr_warn_ratelimited("op %u: bad reply (result %lld out_len %u data_len %u)\n",
				    op->opcode, result, out_len, data_len);
		return -EIO;
	}
	if (out_len)
		memcpy(op->reply, slot->payload, out_len);
	if (data_len && copy_to_iter(zufs_window(s, lane, i), data_len,
				     op->data_out) != data_len)
		return -EFAULT;
	op->reply_len = out_len;
	op->data_len = data_len;
	return result;
}

/**
 * zufs_dispatch - send one op to zusd and wait for its reply
 * @op: the op; see struct zufs_op
 *
 * Runs on the calling CPU's lane when it has a free slot. Returns the
 * server's result (>= 0) or a negative errno: -EIO when there is no server,
 * it died, or its reply was malformed; -EINTR when the caller was killed.
 */
s64 zufs_dispatch(struct zufs_op *op)
{
	struct zufs_session *s;
	struct zus_op_header hdr;
	struct zus_slot *slot;
	struct zufs_kslot *ks;
	u32 home, lane, i;
	s64 ret;
	u64 seq;
	int r, err;

	if (op->req_len > ZUS_PAYLOAD_SIZE)
		return -EINVAL;
	s = zufs_get_session();
	if (!s)
		return -EIO;
	if (current->tgid == s->server_tgid) {
		/* zusd waiting for itself */
		ret = -EDEADLK;
		goto out_put;
	}
	if (op->data_in_len > s->window) {
		ret = -EINVAL;
		goto out_put;
	}

	home = get_cpu();
	r = READ_ONCE(s->broken) ? -EIO : zufs_try_claim(s, home, &lane, &i);
	put_cpu();
	if (r == 0) {
		err = wait_event_killable(s->free_wq,
					  READ_ONCE(s->dead) || READ_ONCE(s->broken) ||
					  (r = zufs_try_claim(s, home, &lane, &i)) != 0);
		if (r == 1 && (err || READ_ONCE(s->dead) ||
			       READ_ONCE(s->broken))) {
			zufs_free_slot(s, lane, i);
			r = 0;
		}
		if (r == 0)
			r = err ? -EINTR : -EIO;
	}
	if (r < 0) {
		ret = r;
		goto out_put;
	}

	slot = zufs_slot(s, lane, i);
	ks = &s->lanes[lane].kslots[i];
	seq = atomic64_inc_return(&s->seq);
	memset(&hdr, 0, sizeof(hdr));
	hdr.opcode = op->opcode;
	hdr.flags = op->flags;
	hdr.mount_id = op->mount_id;
	hdr.in_len = op->req_len;
	hdr.data_len = op->data_in_len;
	hdr.seq = seq;
	hdr.uid = from_kuid_munged(&init_user_ns, current_fsuid());
	hdr.gid = from_kgid_munged(&init_user_ns, current_fsgid());
	hdr.pid = task_tgid_nr(current);
	hdr.ticket = op->ticket;
	/* overwrite whatever zusd left there before the ZT can reap this slot */
	WRITE_ONCE(slot->state, ZUS_SLOT_STATE_CLAIMED);
	memcpy(&slot->hdr, &hdr, sizeof(hdr));
	if (op->req_len)
		memcpy(slot->payload, op->req, op->req_len);
	WRITE_ONCE(slot->client_waiting, 0);
	WRITE_ONCE(slot->data_ready, 0);
	if (op->data_in_len &&
	    copy_from_iter(zufs_window(s, lane, i), op->data_in_len,
			   op->data_in) != op->data_in_len) {
		zufs_free_slot(s, lane, i);
		ret = -EFAULT;
		goto out_put;
	}
	op->submit_cpu = home;
	op->lane = lane;
	op->zt_cpu = READ_ONCE(s->lanes[lane].zt_cpu);

	atomic_set_release(&ks->state, ZK_SUBMITTED);
	smp_store_release(&slot->state, ZUS_SLOT_STATE_SUBMITTED);
	wake_up(&s->lanes[lane].zt_wq);

	err = wait_event_killable(ks->wq,
				  atomic_read_acquire(&ks->state) == ZK_DONE ||
				  READ_ONCE(s->dead));
	if (READ_ONCE(s->dead)) {
		/* the slot dies with the session */
		ret = -EIO;
		goto out_put;
	}
	if (err && atomic_cmpxchg(&ks->state, ZK_SUBMITTED, ZK_ABANDONED) ==
		   ZK_SUBMITTED) {
		ret = -EINTR;
		goto out_put;
	}
	op->done_cpu = ks->done_cpu;
	ret = zufs_read_reply(s, lane, i, seq, op);
	zufs_free_slot(s, lane, i);
out_put:
	zufs_put_session(s);
	return ret;
}
EXPORT_SYMBOL_GPL(zufs_dispatch);

/* The most data one op carries: the current session's window, 0 without one. */
size_t zufs_data_max(void)
{
	struct zufs_session *s = zufs_get_session();
	size_t n = s ? s->window : 0;

	if (s)
		zufs_put_session(s);
	return n;
}

/* ----- the server's ioctls ----- */

static long zufs_hello(struct file *file, void __user *uarg)
{
	struct zufs_ioc_hello h;
	struct zus_channel_set_header *ch;
	struct zufs_session *s;
	u32 ncpu = nr_cpu_ids, slots, window, cpu;
	size_t ctl, lane_size;
	u64 total;
	long ret;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (copy_from_user(&h, uarg, sizeof(h)))
		return -EFAULT;
	if (h.magic != ZUS_MAGIC)
		return -EINVAL;
	if (h.abi_version != ZUS_ABI_VERSION)
		return -EPROTO;
	if (h.flags || memchr_inv(h.reserved, 0, sizeof(h.reserved)))
		return -EINVAL;
	slots = h.slots_per_cpu ?: ZUFS_DEFAULT_SLOTS;
	window = h.window_size ?: ZUFS_DEFAULT_WINDOW;
	if (slots > 64 || window % ZUFS_SET_PAGE || window > ZUFS_MAX_WINDOW)
		return -EINVAL;
	if (ncpu > ZUS_MAX_CPUS)
		return -EOPNOTSUPP;
	ctl = round_up(sizeof(struct zus_lane_header) +
		       (size_t)slots * ZUS_SLOT_SIZE, ZUFS_SET_PAGE);
	lane_size = ctl + (size_t)slots * window;
	total = ZUFS_LANES_OFFSET + (u64)ncpu * lane_size;
	if (total > ZUFS_MAX_SET_SIZE)
		return -E2BIG;

	s = kzalloc(struct_size(s, lanes, ncpu), GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	s->kslots = kcalloc(ncpu * slots, sizeof(*s->kslots), GFP_KERNEL);
	s->mem = vmalloc_user(total);
	if (!s->kslots || !s->mem) {
		ret = -ENOMEM;
		goto err_free;
	}
	kref_init(&s->kref);
	s->size = total;
	s->ncpu = ncpu;
	s->nslots = slots;
	s->window = window;
	s->lane_size = lane_size;
	s->ctl_size = ctl;
	s->server_tgid = current->tgid;
	atomic64_set(&s->seq, 0);
	init_waitqueue_head(&s->free_wq);
	for (cpu = 0; cpu < ncpu * slots; cpu++) {
		atomic_set(&s->kslots[cpu].state, ZK_FREE);
		init_waitqueue_head(&s->kslots[cpu].wq);
	}

	ch = s->mem;
	ch->magic = ZUS_MAGIC;
	ch->abi_version = ZUS_ABI_VERSION;
	ch->header_size = sizeof(*ch);
	ch->features = h.features;
	ch->ncpu = ncpu;
	ch->slots_per_cpu = slots;
	ch->window_size = window;
	ch->lane_size = lane_size;
	ch->lanes_offset = ZUFS_LANES_OFFSET;
	ch->total_size = total;
	ch->server_pid = current->tgid;
	ch->nnodes = nr_node_ids;
	for (cpu = 0; cpu < ncpu; cpu++) {
		struct zufs_lane *l = &s->lanes[cpu];
		struct zus_lane_header *lh = zufs_lane_mem(s, cpu);
		int node = cpu_possible(cpu) ? cpu_to_node(cpu) : 0;

		l->node = node < 0 ? 0 : node;
		l->kslots = &s->kslots[cpu * slots];
		init_waitqueue_head(&l->zt_wq);
		ch->cpu_node[cpu] = l->node;
		lh->zt_cpu = cpu;
	}

	mutex_lock(&zufs_lock);
	if (file->private_data || rcu_access_pointer(zufs_cur)) {
		mutex_unlock(&zufs_lock);
		ret = -EBUSY;
		goto err_free;
	}
	smp_store_release(&file->private_data, s);
	rcu_assign_pointer(zufs_cur, s);
	mutex_unlock(&zufs_lock);
	pr_info("session of pid %d: %u lanes x %u slots, %u KiB windows, %llu bytes\n",
		s->server_tgid, ncpu, slots, window >> 10, total);

	h.slots_per_cpu = slots;
	h.window_size = window;
	h.ncpu = ncpu;
	h.total_size = total;
	h.lane_size = lane_size;
	h.nnodes = nr_node_ids;
	if (copy_to_user(uarg, &h, sizeof(h)))
		return -EFAULT;
	return 0;

err_free:
	vfree(s->mem);
	kfree(s->kslots);
	kfree(s);
	return ret;
}

static long zufs_zt_init(struct zufs_session *s, void __user *uarg)
{
	struct zufs_ioc_zt_init zi;
	struct task_struct *old;
	struct zufs_lane *l;

	if (copy_from_user(&zi, uarg, sizeof(zi)))
		return -EFAULT;
	if (zi.flags || zi.reserved || zi.cpu >= s->ncpu)
		return -EINVAL;
	if (current->tgid != s->server_tgid)
		return -EPERM;
	/* a ZT serves the CPU it runs on, and only that one */
	if (current->nr_cpus_allowed != 1 ||
	    !cpumask_test_cpu(zi.cpu, current->cpus_ptr))
		return -EINVAL;

	l = &s->lanes[zi.cpu];
	mutex_lock(&zufs_lock);
	if (READ_ONCE(s->broken)) {
		mutex_unlock(&zufs_lock);
		return -ESHUTDOWN;
	}
	old = l->zt;
	if (old && !(old->flags & PF_EXITING)) {
		mutex_unlock(&zufs_lock);
		return -EBUSY;
	}
	get_task_struct(current);
	l->kick_seen = atomic_read(&s->kick_seq);
	WRITE_ONCE(l->zt_cpu, zi.cpu);
	WRITE_ONCE(l->zt, current);
	WRITE_ONCE(l->has_zt, true);
	mutex_unlock(&zufs_lock);
	if (old)
		put_task_struct(old);
	return 0;
}

static bool zufs_zt_woken(struct zufs_session *s, u32 cpu, u32 *flags)
{
	struct zufs_lane *l = &s->lanes[cpu];
	unsigned int kick = atomic_read(&s->kick_seq);

	if (READ_ONCE(s->broken))
		*flags |= ZUFS_ZT_BREAK;
	if (kick != l->kick_seen) {
		l->kick_seen = kick;
		*flags |= ZUFS_ZT_KICKED;
	}
	return *flags || zufs_lane_submitted(s, cpu);
}

static long zufs_zt_wait(struct zufs_session *s, void __user *uarg)
{
	struct zufs_ioc_zt_wait w;
	int err;

	if (copy_from_user(&w, uarg, sizeof(w)))
		return -EFAULT;
	if (w.cpu >= s->ncpu)
		return -EINVAL;
	if (READ_ONCE(s->lanes[w.cpu].zt) != current)
		return -EPERM;
	w.flags = 0;
	w.completed = zufs_reap(s, w.cpu);
	err = wait_event_interruptible(s->lanes[w.cpu].zt_wq,
				       zufs_zt_woken(s, w.cpu, &w.flags));
	if (err)
		return err;
	w.submitted = zufs_lane_submitted(s, w.cpu);
	if (copy_to_user(uarg, &w, sizeof(w)))
		return -EFAULT;
	return 0;
}

/* ----- debug ----- */

static long zufs_dbg_op(void __user *uarg)
{
	struct zufs_ioc_dbg_op d;
	struct zufs_op op = {};
	struct iov_iter in, out;
	struct iovec iov_in, iov_out;
	void *reply;
	s64 ret;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (copy_from_user(&d, uarg, sizeof(d)))
		return -EFAULT;
	if ((d.flags & ~ZUFS_DBG_F_ARGS) || d.reserved || d.nargs > 4 ||
	    d.reply_size > ZUS_PAYLOAD_SIZE)
		return -EINVAL;
	reply = kzalloc(ZUS_PAYLOAD_SIZE, GFP_KERNEL);
	if (!reply)
		return -ENOMEM;

	op.opcode = ZUS_OP_NOOP;
	if (d.flags & ZUFS_DBG_F_ARGS) {
		op.req = d.args;
		op.req_len = d.nargs * sizeof(d.args[0]);
	}
	op.reply = reply;
	op.reply_size = d.reply_size;
	op.result_max = d.result_max;
	if (d.data_in_len) {
		ret = import_single_range(ITER_SOURCE, u64_to_user_ptr(d.data_in),
					  d.data_in_len, &iov_in, &in);
		if (ret)
			goto out;
		op.data_in = &in;
		op.data_in_len = d.data_in_len;
	}
	if (d.data_out_size) {
		ret = import_single_range(ITER_DEST, u64_to_user_ptr(d.data_out),
					  d.data_out_size, &iov_out, &out);
		if (ret)
			goto out;
		op.data_out = &out;
		op.data_out_size = d.data_out_size;
	}

	ret = zufs_dispatch(&op);
	if (ret < 0)
		goto out;
	d.result = ret;
	d.submit_cpu = op.submit_cpu;
	d.lane = op.lane;
	d.zt_cpu = op.zt_cpu;
	d.done_cpu = op.done_cpu;
	d.out_len = op.reply_len;
	d.data_len = op.data_len;
	memcpy(d.reply, reply, sizeof(d.reply));
	ret = copy_to_user(uarg, &d, sizeof(d)) ? -EFAULT : 0;
out:
	kfree(reply);
	return ret;
}

/* ----- dax reader slots (dax.c) ----- */

/*
 * Which of the set's dax reader slots a kernel thread uses: kernel memory,
 * across sessions (a reader of an old session clears its bit when done).
 */
static unsigned long zufs_dax_busy[BITS_TO_LONGS(ZUS_DAX_READER_SLOTS)];
static DECLARE_WAIT_QUEUE_HEAD(zufs_dax_wq);

static bool zufs_dax_claim(u32 *idx)
{
	u32 start = raw_smp_processor_id() % ZUS_DAX_READER_SLOTS, n, i;

	for (n = 0; n < ZUS_DAX_READER_SLOTS; n++) {
		i = (start + n) % ZUS_DAX_READER_SLOTS;
		if (!test_and_set_bit_lock(i, zufs_dax_busy)) {
			*idx = i;
			return true;
		}
	}
	return false;
}

static u64 *zufs_dax_slot(struct zufs_session *s, u32 idx)
{
	return s->mem + ZUFS_SET_PAGE + (size_t)idx * ZUS_CACHE_LINE;
}

/*
 * Holds a dax reader slot of the current session's set with its layout
 * generation until zufs_dax_reader_end(); -EIO without a session.
 */
int zufs_dax_reader_begin(struct zufs_dax_reader *r)
{
	struct zufs_session *s = zufs_get_session();
	struct zus_channel_set_header *ch;
	u64 gen;

	if (!s)
		return -EIO;
	wait_event(zufs_dax_wq, zufs_dax_claim(&r->idx));
	ch = s->mem;
	gen = READ_ONCE(ch->layout_gen);
	WRITE_ONCE(*zufs_dax_slot(s, r->idx), gen ?: 1);
	/* the slot is visible before any extent is looked at */
	smp_mb();
	r->session = s;
	return 0;
}

void zufs_dax_reader_end(struct zufs_dax_reader *r)
{
	struct zufs_session *s = r->session;

	smp_store_release(zufs_dax_slot(s, r->idx), 0);
	clear_bit_unlock(r->idx, zufs_dax_busy);
	smp_mb__after_atomic();
	if (wq_has_sleeper(&zufs_dax_wq))
		wake_up(&zufs_dax_wq);
	zufs_put_session(s);
}

/* The layout generation, tagged with the session (a new zusd starts at 1). */
u64 zufs_dax_layout_key(void)
{
	struct zufs_session *s = zufs_get_session();
	struct zus_channel_set_header *ch;
	u64 key;

	if (!s)
		return 0;
	ch = s->mem;
	key = READ_ONCE(ch->layout_gen) ^ ((u64)s->server_tgid << 40);
	zufs_put_session(s);
	return key ?: 1;
}

/* ----- the device ----- */

static long zufs_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct zufs_session *s = smp_load_acquire(&file->private_data);
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case ZUFS_IOC_HELLO:
		return zufs_hello(file, uarg);
	case ZUFS_IOC_DBG_OP:
		return zufs_dbg_op(uarg);
	case ZUFS_IOC_GRAB_PMEM:
		return zufs_pmem_grab_ioctl(uarg);	/* pmem.c */
	case ZUFS_IOC_ZT_INIT:
	case ZUFS_IOC_ZT_WAIT:
	case ZUFS_IOC_KICK_ALL:
	case ZUFS_IOC_BREAK:
		if (!s)
			return -EINVAL;	/* no HELLO on this fd */
		break;
	default:
		return -ENOTTY;
	}
	switch (cmd) {
	case ZUFS_IOC_ZT_INIT:
		return zufs_zt_init(s, uarg);
	case ZUFS_IOC_ZT_WAIT:
		return zufs_zt_wait(s, uarg);
	case ZUFS_IOC_KICK_ALL:
		atomic_inc(&s->kick_seq);
		zufs_wake_zts(s);
		return 0;
	case ZUFS_IOC_BREAK:
		WRITE_ONCE(s->broken, true);
		zufs_wake_zts(s);
		wake_up_all(&s->free_wq);
		return 0;
	}
	return -ENOTTY;
}

static int zufs_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct zufs_session *s = smp_load_acquire(&file->private_data);

	if (!s || vma->vm_pgoff || !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	vma->vm_flags &= ~VM_MAYEXEC;
	vma->vm_flags |= VM_DONTCOPY;
	return remap_vmalloc_range(vma, s->mem, 0);
}

static int zufs_open(struct inode *inode, struct file *file)
{
	/* misc_open() left our miscdevice here; a session comes with HELLO */
	file->private_data = NULL;
	return 0;
}

/* The server's last reference is gone (it exited or closed): end the session. */
static int zufs_release(struct inode *inode, struct file *file)
{
	struct zufs_session *s = file->private_data;
	u32 i;

	if (!s)
		return 0;
	mutex_lock(&zufs_lock);
	if (rcu_access_pointer(zufs_cur) == s)
		RCU_INIT_POINTER(zufs_cur, NULL);
	WRITE_ONCE(s->dead, true);
	mutex_unlock(&zufs_lock);
	/* no zufs_get_session() still looks at it */
	synchronize_rcu();
	for (i = 0; i < s->ncpu * s->nslots; i++)
		wake_up(&s->kslots[i].wq);
	wake_up_all(&s->free_wq);
	zufs_wake_zts(s);
	pr_info("session of pid %d ended\n", s->server_tgid);
	zufs_put_session(s);
	return 0;
}

static const struct file_operations zufs_fops = {
	.owner		= THIS_MODULE,
	.open		= zufs_open,
	.unlocked_ioctl	= zufs_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.mmap		= zufs_mmap,
	.release	= zufs_release,
	.llseek		= noop_llseek,
};

static struct miscdevice zufs_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "zufs",
	.fops	= &zufs_fops,
	.mode	= 0600,
};

static int __init zufs_init(void)
{
	int err = zufs_fs_init();

	if (err)
		return err;
	err = misc_register(&zufs_misc);
	if (err) {
		zufs_fs_exit();
		return err;
	}
	pr_info("loaded: /dev/zufs, zus_api ABI %u\n", ZUS_ABI_VERSION);
	return 0;
}

static void __exit zufs_exit(void)
{
	misc_deregister(&zufs_misc);
	zufs_fs_exit();
	pr_info("unloaded\n");
}

module_init(zufs_init);
module_exit(zufs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("zufs: a thin kernel module for the zusd user-mode pmem filesystem server");
