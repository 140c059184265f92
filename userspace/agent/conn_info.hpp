#pragma once
// The agent reads the one connection record, redir::ConnInfo (common/conn_info.hpp).
#include "common/conn_info.hpp"
