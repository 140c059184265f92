#pragma once
// The one writer of JSON state files (agent policies/attachments, providers,
// inference): pretty JSON replaced atomically, so a crash leaves the old or the
// new file, never a torn one.
#include <sys/types.h>

#include <functional>
#include <string>

#include "common/json_out.hpp"

namespace redir {

// Builds the document with FILL and replaces PATH with it at MODE (temp file,
// fsync, rename, fsync dir). Creates PATH's directory (0700) if missing.
void write_json_state(const std::string& path, const std::function<void(PrettyJsonOut&)>& fill, mode_t mode = 0600);

}  // namespace redir
