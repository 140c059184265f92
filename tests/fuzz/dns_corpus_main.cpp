// Replays the committed corpus (seeds and crash reproducers) through the
// fuzz target with the ordinary compiler, so every build checks them even
// where libFuzzer is unavailable.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR...\n", argv[0]);
        return 2;
    }
    size_t n = 0;
    for (int i = 1; i < argc; ++i) {
        std::error_code ec;
        for (const auto& e : std::filesystem::directory_iterator(argv[i], ec)) {
            if (!e.is_regular_file()) continue;
            std::ifstream f(e.path(), std::ios::binary);
            std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
            LLVMFuzzerTestOneInput(data.data(), data.size());
            ++n;
        }
        if (ec) {
            std::fprintf(stderr, "%s: cannot read corpus directory %s: %s\n", argv[0], argv[i], ec.message().c_str());
            return 1;
        }
    }
    if (n == 0) {
        std::fprintf(stderr, "%s: no corpus files found\n", argv[0]);
        return 1;
    }
    std::printf("%zu inputs ok\n", n);
    return 0;
}
