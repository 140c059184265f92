/* escape_probe: escape attempts that need system calls Python does not offer
 * (io_uring, sendmmsg, vfork, clone3 into a cgroup, a setuid-root binary).
 *
 * Every mode prints one line of `key=value` words (values are "OK" or an errno
 * name) and exits 0 if it could make the attempt at all, so the test decides
 * what counts as blocked. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *err_name(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "UNKNOWN";
}

/* ADDR PORT -> sockaddr (v4 or v6 literal). */
static socklen_t parse_addr(const char *addr, const char *port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((unsigned short)atoi(port));
		return sizeof(*v4);
	}
	if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((unsigned short)atoi(port));
		return sizeof(*v6);
	}
	fprintf(stderr, "escape_probe: %s is not an IPv4 or IPv6 literal; pass a numeric address\n", addr);
	exit(2);
}

static int plain_connect(const char *addr, const char *port, int type)
{
	struct sockaddr_storage ss;
	socklen_t len = parse_addr(addr, port, &ss);
	int fd = socket(ss.ss_family, type, 0);
	if (fd < 0)
		return errno;
	int rc = connect(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : errno;
	close(fd);
	return rc;
}

/* io_uring runs the operation from its own context (inline or an io-wq
 * worker): the hooks must still see it as the sandbox's. */
static int uring_op(const char *addr, const char *port, int type, int use_socket_op)
{
	struct sockaddr_storage ss;
	socklen_t len = parse_addr(addr, port, &ss);
	struct io_uring ring;
	int rc = io_uring_queue_init(4, &ring, 0);
	if (rc < 0) {
		printf("uring_setup=%s\n", err_name(-rc));
		return 0;
	}
	int fd = -1;
	if (use_socket_op) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		io_uring_prep_socket(sqe, ss.ss_family, type, 0, 0);
		struct io_uring_cqe *cqe;
		io_uring_submit(&ring);
		io_uring_wait_cqe(&ring, &cqe);
		fd = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		if (fd < 0) {
			printf("socket=%s\n", err_name(-fd));
			return 0;
		}
	} else {
		fd = socket(ss.ss_family, type, 0);
		if (fd < 0) {
			printf("socket=%s\n", err_name(errno));
			return 0;
		}
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	char payload[] = "escape attempt through io_uring";
	struct iovec iov = { .iov_base = payload, .iov_len = sizeof(payload) };
	struct msghdr msg = { .msg_name = &ss, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1 };
	if (type == SOCK_STREAM)
		io_uring_prep_connect(sqe, fd, (struct sockaddr *)&ss, len);
	else
		io_uring_prep_sendmsg(sqe, fd, &msg, 0);
	/* Force the io-wq worker path as well as the inline one. */
	sqe->flags |= IOSQE_ASYNC;
	io_uring_submit(&ring);
	struct io_uring_cqe *cqe;
	io_uring_wait_cqe(&ring, &cqe);
	int res = cqe->res;
	io_uring_cqe_seen(&ring, cqe);
	printf("%s=%s\n", type == SOCK_STREAM ? "connect" : "sendmsg", res >= 0 ? "OK" : err_name(-res));
	close(fd);
	io_uring_queue_exit(&ring);
	return 0;
}

static int do_sendmmsg(const char *addr, const char *port)
{
	struct sockaddr_storage ss;
	socklen_t len = parse_addr(addr, port, &ss);
	int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
	if (fd < 0) {
		printf("socket=%s\n", err_name(errno));
		return 0;
	}
	char a[] = "first datagram", b[] = "second datagram";
	struct iovec iov[2] = { { a, sizeof(a) }, { b, sizeof(b) } };
	struct mmsghdr m[2];
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 2; i++) {
		m[i].msg_hdr.msg_name = &ss;
		m[i].msg_hdr.msg_namelen = len;
		m[i].msg_hdr.msg_iov = &iov[i];
		m[i].msg_hdr.msg_iovlen = 1;
	}
	int n = sendmmsg(fd, m, 2, 0);
	printf("sendmmsg=%s sent=%d\n", n >= 0 ? "OK" : err_name(errno), n < 0 ? 0 : n);
	close(fd);
	return 0;
}

/* vfork: the child shares the parent's memory until it execs; it execs this
 * binary again in `connect` mode. */
static int do_vfork(const char *self, const char *addr, const char *port)
{
	fflush(stdout);
	pid_t pid = vfork();
	if (pid == 0) {
		execl(self, self, "connect", addr, port, "tcp", (char *)NULL);
		_exit(127);
	}
	if (pid < 0) {
		printf("vfork=%s\n", err_name(errno));
		return 0;
	}
	int status = 0;
	waitpid(pid, &status, 0);
	return 0;
}

/* clone3(CLONE_INTO_CGROUP): start a child directly in another cgroup. */
static int do_clone_into(const char *cgdir, const char *addr, const char *port)
{
	int cgfd = open(cgdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cgfd < 0) {
		printf("open_cgroup=%s\n", err_name(errno));
		return 0;
	}
	struct clone_args args;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (unsigned long long)cgfd;
	fflush(stdout);
	long pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid == 0) {
		int rc = plain_connect(addr, port, SOCK_STREAM);
		printf("clone3=OK connect=%s\n", rc ? err_name(rc) : "OK");
		fflush(stdout);
		_exit(0);
	}
	if (pid < 0) {
		printf("clone3=%s\n", err_name(errno));
		return 0;
	}
	int status = 0;
	waitpid((pid_t)pid, &status, 0);
	return 0;
}

/* Installed setuid root by the test: without no_new_privs it would run as
 * root and could leave the sandbox cgroup before connecting. */
static int do_setuid_escape(const char *cgroot, const char *addr, const char *port)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroot);
	int fd = open(path, O_WRONLY);
	const char *move = "OK";
	if (fd < 0) {
		move = err_name(errno);
	} else {
		char pid[32];
		int n = snprintf(pid, sizeof(pid), "%d\n", getpid());
		if (write(fd, pid, (size_t)n) != n)
			move = err_name(errno);
		close(fd);
	}
	int rc = plain_connect(addr, port, SOCK_STREAM);
	printf("euid=%d move=%s connect=%s\n", (int)geteuid(), move, rc ? err_name(rc) : "OK");
	return 0;
}

/* socket() through the 32-bit (int $0x80) and x32 system call ABIs: a
 * seccomp filter written for the native ABI only would not see these. */
static int do_other_abi_socket(const char *abi, int family, int type)
{
	printf("attempt=%s\n", abi);
	fflush(stdout);
	long ret;
#if defined(__x86_64__)
	if (!strcmp(abi, "ia32")) {
		asm volatile("int $0x80" : "=a"(ret) : "a"(359L), "b"((long)family), "c"((long)type), "d"(0L) : "memory");
	} else {
		asm volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 41L), "D"((long)family), "S"((long)type), "d"(0L)
			     : "rcx", "r11", "memory");
	}
#else
	(void)family;
	(void)type;
	ret = -ENOSYS;
#endif
	printf("socket=%s\n", ret >= 0 ? "OK" : err_name((int)-ret));
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: escape_probe connect ADDR PORT tcp|udp | uring-connect ADDR PORT | uring-sendmsg ADDR PORT |\n"
		"       uring-socket-connect ADDR PORT | sendmmsg ADDR PORT | vfork-connect ADDR PORT |\n"
		"       clone-into-cgroup CGDIR ADDR PORT | setuid-escape CGROOT ADDR PORT |\n"
		"       other-abi-socket ia32|x32 FAMILY TYPE\n");
	exit(2);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 4)
		usage();
	const char *mode = argv[1];
	if (!strcmp(mode, "connect") && argc == 5) {
		int rc = plain_connect(argv[2], argv[3], strcmp(argv[4], "udp") ? SOCK_STREAM : SOCK_DGRAM);
		printf("connect=%s\n", rc ? err_name(rc) : "OK");
		return 0;
	}
	if (!strcmp(mode, "uring-connect"))
		return uring_op(argv[2], argv[3], SOCK_STREAM, 0);
	if (!strcmp(mode, "uring-socket-connect"))
		return uring_op(argv[2], argv[3], SOCK_STREAM, 1);
	if (!strcmp(mode, "uring-sendmsg"))
		return uring_op(argv[2], argv[3], SOCK_DGRAM, 0);
	if (!strcmp(mode, "sendmmsg"))
		return do_sendmmsg(argv[2], argv[3]);
	if (!strcmp(mode, "vfork-connect"))
		return do_vfork("/proc/self/exe", argv[2], argv[3]);
	if (!strcmp(mode, "clone-into-cgroup") && argc == 5)
		return do_clone_into(argv[2], argv[3], argv[4]);
	if (!strcmp(mode, "setuid-escape") && argc == 5)
		return do_setuid_escape(argv[2], argv[3], argv[4]);
	if (!strcmp(mode, "other-abi-socket") && argc == 5)
		return do_other_abi_socket(argv[2], atoi(argv[3]), atoi(argv[4]));
	usage();
	return 2;
}
