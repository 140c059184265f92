// Serialises a state document and hands it to the atomic file writer.
#include "common/json_state.hpp"

#include <filesystem>

#include "common/atomic_file.hpp"

namespace redir {

void write_json_state(const std::string& path, const std::function<void(PrettyJsonOut&)>& fill, mode_t mode) {
    PrettyJsonOut j;
    fill(j);
    std::filesystem::path p(path);
    if (p.has_parent_path()) make_dirs(p.parent_path().string(), 0700);
    write_file_atomic(path, j.take(), mode);
}

}  // namespace redir
