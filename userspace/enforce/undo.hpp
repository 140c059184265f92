#pragma once
// A transaction's undo log: each step that changed something pushes how to
// take it back; unless commit() is reached, the destructor runs them newest
// first. Replaces nested try/catch around multi-step changes.
#include <functional>
#include <utility>
#include <vector>

namespace redir::enforce {

class Undo {
public:
    Undo() = default;
    Undo(const Undo&) = delete;
    Undo& operator=(const Undo&) = delete;
    ~Undo() {
        if (committed_) return;
        for (auto it = steps_.rbegin(); it != steps_.rend(); ++it) {
            try {
                (*it)();
            } catch (...) {
                // Best effort: the failure being unwound is the one reported.
            }
        }
    }

    void push(std::function<void()> undo_step) { steps_.push_back(std::move(undo_step)); }
    void commit() { committed_ = true; }

private:
    std::vector<std::function<void()>> steps_;
    bool committed_ = false;
};

}  // namespace redir::enforce
