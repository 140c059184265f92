// GCC 12's UBSan at EMFILE, built only in the soak's sanitized tree: reports a valid object as "invalid vptr" (false positive) — and, with --overflow, a real signed overflow next to it — on stderr, exit 0.
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace {
struct Base {
    virtual ~Base() = default;
    virtual int f() { return 1; }
};
struct Derived : Base {
    int f() override { return 2; }
};
// Not inlined: the call through Base* is what UBSan's vptr check probes.
int __attribute__((noinline)) call(Base* b) { return b->f(); }
}  // namespace

int main(int argc, char** argv) {
    Derived d;
    // Few descriptors, all taken: the runtime can open neither its pipe nor its log file.
    rlimit rl{64, 64};
    ::setrlimit(RLIMIT_NOFILE, &rl);
    while (::dup(0) >= 0) {
    }
    int r = call(&d);
    if (argc > 1 && std::strcmp(argv[1], "--overflow") == 0) {
        volatile int one = 1;
        int x = 0x7fffffff;
        x += one;  // a real report, which no exception may drop
        r += x & 1;
    }
    // Descriptors back, so the leak check at exit can run.
    for (int fd = 3; fd < 64; fd++) ::close(fd);
    std::printf("done %d\n", r);
    return 0;
}
