#pragma once
// A client connection's arena for one request's header fields: the two
// field lists a proxied request parses (the sandbox's request, the provider's
// answer: flat_fields.hpp) and the two heads it writes (the provider
// request's, the answer to the sandbox's) are carved from a buffer the
// connection keeps, and all given back at once when the next request starts,
// instead of one malloc/free per field.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <new>
#include <optional>

namespace redir::terminator {

class RequestArena {
public:
    using Alloc = std::pmr::polymorphic_allocator<char>;

    // INLINE: the buffer kept from the connection's first request on. CAP:
    // what one request may take from the heap beyond it (std::bad_alloc past
    // it: the request fails, the agent does not grow). HELD, when given: a
    // gauge of the bytes taken beyond inline buffers now (several arenas).
    RequestArena(std::size_t inline_bytes, std::size_t cap, std::atomic<std::uint64_t>* held = nullptr)
        : inline_bytes_(inline_bytes), heap_(cap, held) {}
    RequestArena(const RequestArena&) = delete;
    RequestArena& operator=(const RequestArena&) = delete;
    ~RequestArena() { reset(); }

    // Allocates the inline buffer on first use: a connection that never
    // sends a request costs nothing.
    Alloc alloc() {
        if (!mono_) {
            buf_ = std::make_unique_for_overwrite<std::byte[]>(inline_bytes_);
            mono_.emplace(buf_.get(), inline_bytes_, &heap_);
        }
        return Alloc(&*mono_);
    }
    // Everything allocated since the last reset is gone (its objects must be
    // destroyed already); the heap blocks go back, the inline buffer stays.
    void reset() noexcept {
        if (mono_) mono_->release();
    }
    // Taken from the heap beyond the inline buffer since the last reset.
    std::size_t heap_bytes() const { return heap_.held(); }
    // The most heap_bytes() has been.
    std::size_t heap_peak() const { return heap_.peak(); }
    std::size_t cap() const { return heap_.cap(); }
    bool has_buffer() const { return buf_ != nullptr; }

private:
    // The monotonic resource's upstream: counts and caps its heap blocks.
    class Heap final : public std::pmr::memory_resource {
    public:
        Heap(std::size_t cap, std::atomic<std::uint64_t>* gauge) : cap_(cap), gauge_(gauge) {}
        std::size_t held() const { return held_; }
        std::size_t peak() const { return peak_; }
        std::size_t cap() const { return cap_; }

    private:
        void* do_allocate(std::size_t bytes, std::size_t align) override {
            if (bytes > cap_ - held_) throw std::bad_alloc();
            void* p = std::pmr::new_delete_resource()->allocate(bytes, align);
            held_ += bytes;
            if (held_ > peak_) peak_ = held_;
            if (gauge_) gauge_->fetch_add(bytes, std::memory_order_relaxed);
            return p;
        }
        void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
            std::pmr::new_delete_resource()->deallocate(p, bytes, align);
            held_ -= bytes;
            if (gauge_) gauge_->fetch_sub(bytes, std::memory_order_relaxed);
        }
        bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override { return this == &o; }
        std::size_t cap_;
        std::atomic<std::uint64_t>* gauge_;
        std::size_t held_ = 0;
        std::size_t peak_ = 0;
    };

    std::size_t inline_bytes_;
    Heap heap_;
    std::unique_ptr<std::byte[]> buf_;
    std::optional<std::pmr::monotonic_buffer_resource> mono_;
};

}  // namespace redir::terminator
