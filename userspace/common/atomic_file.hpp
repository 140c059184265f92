#pragma once
// Crash-safe file replacement and the small file helpers state owners share.
#include <string>
#include <string_view>
#include <sys/types.h>

namespace redir {

// Replaces PATH with DATA so that a crash at any point leaves either the old
// or the new content: temp file in the same directory, fsync, rename, fsync dir.
void write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0600);

// Makes a rename or unlink inside DIR durable; best effort (a directory that
// cannot be opened is left to the next fsync).
void fsync_dir(const std::string& dir);

// Whole file as a string; throws redir::Error naming the path.
std::string read_file(const std::string& path);

// mkdir -p with MODE for each created component.
void make_dirs(const std::string& path, mode_t mode = 0700);

}  // namespace redir
