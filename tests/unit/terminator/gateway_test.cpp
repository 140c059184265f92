// The gateway end to end on loopback: sandbox-side clients over 127.0.0.1
// talk to it, and it forwards to an in-test TLS provider whose certificate
// comes from a CA made in the test.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "terminator/gateway.hpp"
#include "terminator/store.hpp"
#include "terminator/tls_stream.hpp"
#include "loopback.hpp"
#include "test_certs.hpp"

namespace redir::terminator {
namespace {

using namespace redir::test;
namespace ssl = asio::ssl;
// How long to wait for what the gateway does in the background. Generous: the
// same tests run under ASan + UBSan (tests/soak) on a loaded 2-core machine,
// many times slower; a passing test stops waiting as soon as the condition holds.
constexpr auto kPatience = 20s;

struct Received {
    std::string method;
    std::string target;
    std::map<std::string, std::vector<std::string>> headers;  // lower-case names
    std::string body;
    std::string header(const std::string& n) const {
        auto it = headers.find(n);
        return it == headers.end() || it->second.empty() ? std::string() : it->second.front();
    }
    bool has(const std::string& n) const { return headers.count(n) > 0; }
};

// Blocking TLS server, one thread per connection; each test scripts its
// answers through the handler.
class FakeProvider {
public:
    struct Conn {
        ssl::stream<tcp::socket>& s;
        bool write(std::string_view d) {
            beast::error_code ec;
            asio::write(s, asio::buffer(d.data(), d.size()), ec);
            return !ec;
        }
    };
    // Returns whether to keep the connection open.
    using Handler = std::function<bool(const Received&, Conn&)>;

    explicit FakeProvider(const test::KeyCert& kc) : ctx_(ssl::context::tls_server), acceptor_(io_, {kLoopback, 0}) {
        ctx_.use_certificate_chain(asio::buffer(kc.cert_pem));
        ctx_.use_private_key(asio::buffer(kc.key_pem), ssl::context::pem);
        handler_ = [](const Received&, Conn& c) {
            std::string body =
                R"({"id":"cmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}})";
            return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: provider=1\r\n"
                           "X-Request-Id: req-1\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n" + body);
        };
        accept_thread_ = std::thread([this] { accept_loop(); });
    }
    ~FakeProvider() {
        stop_ = true;
        cv_.notify_all();
        accept_thread_.join();
        {
            std::lock_guard lk(mu_);
            for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
        }
        for (auto& t : threads_) t.join();
    }
    uint16_t port() const { return acceptor_.local_endpoint().port(); }
    void set_handler(Handler h) {
        std::lock_guard lk(mu_);
        handler_ = std::move(h);
    }
    std::vector<Received> received() {
        std::lock_guard lk(mu_);
        return received_;
    }
    int connections() const { return connections_; }
    // Waits up to D for the stop flag (a handler that must stay silent).
    void idle(std::chrono::milliseconds d) {
        std::unique_lock lk(mu_);
        cv_.wait_for(lk, d, [&] { return stop_.load(); });
    }

private:
    void accept_loop() {
        acceptor_.non_blocking(true);
        while (!stop_) {
            beast::error_code ec;
            tcp::socket s(io_);
            acceptor_.accept(s, ec);
            if (ec == asio::error::would_block) {
                std::this_thread::sleep_for(5ms);
                continue;
            }
            if (ec) continue;
            ++connections_;
            std::lock_guard lk(mu_);
            fds_.push_back(s.native_handle());
            threads_.emplace_back([this, s = std::move(s)]() mutable { serve(std::move(s)); });
        }
    }
    void serve(tcp::socket sock) {
        ssl::stream<tcp::socket> s(std::move(sock), ctx_);
        beast::error_code ec;
        s.handshake(ssl::stream_base::server, ec);
        if (ec) return;
        beast::flat_buffer buf;
        for (;;) {
            http::request<http::string_body> req;
            http::read(s, buf, req, ec);
            if (ec) return;
            Received r;
            r.method = std::string(req.method_string());
            r.target = std::string(req.target());
            for (const auto& f : req) {
                std::string n(f.name_string());
                for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                r.headers[n].emplace_back(f.value());
            }
            r.body = req.body();
            Handler h;
            {
                std::lock_guard lk(mu_);
                received_.push_back(r);
                h = handler_;
            }
            Conn c{s};
            if (!h(r, c) || !req.keep_alive()) break;
        }
        beast::get_lowest_layer(s).shutdown(tcp::socket::shutdown_both, ec);
        beast::get_lowest_layer(s).close(ec);
    }

    asio::io_context io_;
    ssl::context ctx_;
    tcp::acceptor acceptor_;
    std::atomic<bool> stop_{false};
    std::atomic<int> connections_{0};
    std::mutex mu_;
    std::condition_variable_any cv_;
    Handler handler_;
    std::vector<Received> received_;
    std::vector<int> fds_;
    std::vector<std::thread> threads_;
    std::thread accept_thread_;
};

// D as one chunk of a chunked body.
std::string chunk(const std::string& d) {
    char hex[16];
    snprintf(hex, sizeof hex, "%zx\r\n", d.size());
    return hex + d + "\r\n";
}

enum class Mode { Cleartext, Tls, Refusal };

// Run twice: on the caller's io thread (GatewayOptions::threads 0) and on
// two io threads of the gateway's own, each with its own provider pool.
class GatewayTest : public ::testing::TestWithParam<std::size_t> {
protected:
    void SetUp() override {
        ca_file_ = dir_ + "/provider-ca.pem";
        std::ofstream(ca_file_) << ca_.cert_pem();
        fake_ = std::make_unique<FakeProvider>(ca_.issue("provider", "IP:127.0.0.1,DNS:provider.test"));
        store_ = std::make_shared<Store>(dir_ + "/state");
    }
    void TearDown() override {
        io_.join();
        gw_.reset();
        fake_.reset();
    }

    void start(GatewayOptions o = {}, Mode mode = Mode::Cleartext) {
        mode_ = mode;
        o.on_request = [this](const RequestLog& r) {
            std::lock_guard lk(log_mu_);
            logs_.push_back(r);
        };
        o.threads = GetParam();
        gw_ = std::make_unique<Gateway>(io_.get_executor(), store_, std::move(o));
        accept();
        io_.start();
    }
    void accept() {
        acceptor_.async_accept([this](beast::error_code ec, tcp::socket s) {
            if (ec) return;
            ConnInfo ci{next_cgroup_.load(), 77, "127.0.0.1:1", "198.18.0.1:443"};
            if (mode_ == Mode::Cleartext) gw_->serve_cleartext_for_tests(std::move(s), ci);
            if (mode_ == Mode::Tls) gw_->serve_tls(std::move(s), server_ctx_->native_handle(), ci);
            if (mode_ == Mode::Refusal) gw_->serve_plain_refusal(std::move(s), ci);
            accept();
        });
    }

    std::string provider_url(const std::string& suffix = "/v1") const {
        return "https://127.0.0.1:" + std::to_string(fake_->port()) + suffix;
    }
    void use(const std::string& type, const std::string& model, std::map<std::string, std::string> creds,
             const std::string& suffix = "/v1") {
        store_->create_provider(Provider{"p", type, type == "mock" ? "" : provider_url(suffix),
                                         type == "mock" ? "" : ca_file_, std::move(creds)});
        store_->set_inference("p", model);
    }
    void use_openai(const std::string& model = "gpt-configured") {
        use("openai", model, {{"OPENAI_API_KEY", "sk-provider-secret-0001"}});
    }

    tcp::socket connect() {
        tcp::socket s(client_io_);
        s.connect({kLoopback, acceptor_.local_endpoint().port()});
        return s;
    }
    template <class Stream>
    static http::response<http::string_body> roundtrip(Stream& s, http::request<http::string_body> req) {
        if (!req.count(http::field::host)) req.set(http::field::host, "inference.local");
        req.prepare_payload();
        http::write(s, req);
        beast::flat_buffer buf;
        http::response<http::string_body> res;
        http::read(s, buf, res);
        return res;
    }
    http::response<http::string_body> post(const std::string& target, const std::string& body,
                                           std::vector<std::pair<std::string, std::string>> headers = {}) {
        auto s = connect();
        http::request<http::string_body> req{http::verb::post, target, 11};
        req.set(http::field::content_type, "application/json");
        for (auto& [n, v] : headers) req.set(n, v);
        req.body() = body;
        return roundtrip(s, std::move(req));
    }
    http::response<http::string_body> get(const std::string& target,
                                          std::vector<std::pair<std::string, std::string>> headers = {}) {
        auto s = connect();
        http::request<http::string_body> req{http::verb::get, target, 11};
        for (auto& [n, v] : headers) req.set(n, v);
        return roundtrip(s, std::move(req));
    }
    // Sends RAW as is; returns everything the gateway sent until it closed.
    std::string raw(const std::string& bytes, bool half_close = true) {
        auto s = connect();
        asio::write(s, asio::buffer(bytes));
        if (half_close) s.shutdown(tcp::socket::shutdown_send);
        std::string out;
        beast::error_code ec;
        char b[4096];
        for (;;) {
            std::size_t n = s.read_some(asio::buffer(b), ec);
            if (ec) break;
            out.append(b, n);
        }
        return out;
    }
    // The provider streams until a write fails; the flag says it saw the client's hang-up reach it.
    std::shared_ptr<std::atomic<bool>> stream_until_the_client_leaves() {
        auto saw_close = std::make_shared<std::atomic<bool>>(false);
        fake_->set_handler([saw_close](const Received&, FakeProvider::Conn& c) {
            c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for (int i = 0; i < 100; ++i) {
                if (!c.write(chunk("data: x\n\n"))) {
                    *saw_close = true;
                    return false;
                }
                std::this_thread::sleep_for(50ms);
            }
            return false;
        });
        return saw_close;
    }
    // Sends a streaming request on S and reads until the stream has begun.
    template <class Stream>
    static void begin_stream(Stream& s) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.set(http::field::host, "i");
        req.body() = R"({"stream":true})";
        req.prepare_payload();
        http::write(s, req);
        char b[512];
        s.read_some(asio::buffer(b));
    }
    std::vector<RequestLog> logs() {
        std::lock_guard lk(log_mu_);
        return logs_;
    }
    // Records are written after the response went out: wait for them.
    std::vector<RequestLog> wait_logs(std::size_t n) {
        auto deadline = Clock::now() + kPatience;
        while (logs().size() < n && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
        return logs();
    }

    test::TestCa ca_;
    redir::test::ScratchDir scratch_{"redir-term-gw"};
    std::string dir_ = scratch_.path(), ca_file_;
    std::unique_ptr<FakeProvider> fake_;
    std::shared_ptr<Store> store_;
    redir::test::IoThread io_;
    asio::io_context client_io_;
    tcp::acceptor acceptor_{io_, {kLoopback, 0}};
    std::unique_ptr<Gateway> gw_;
    Mode mode_ = Mode::Cleartext;
    // The sandbox (cgroup) the next accepted connection is from.
    std::atomic<std::uint64_t> next_cgroup_{4242};
    std::unique_ptr<ssl::context> server_ctx_;
    std::mutex log_mu_;
    std::vector<RequestLog> logs_;
};

bool contains(const std::string& h, const std::string& n) { return h.find(n) != std::string::npos; }

TEST_P(GatewayTest, RewritesModelSwapsCredentialAndFiltersHeaders) {
    use_openai();
    start();
    auto res = post("/v1/chat/completions?api_key=leak", R"({"messages":[{"role":"user","content":"hi"}]})",
                    {{"Authorization", "Bearer sandbox-dummy"},
                     {"X-Api-Key", "sandbox-dummy"},
                     {"Cookie", "a=b"},
                     {"OpenAI-Organization", "org-1"},
                     {"X-Custom", "1"},
                     {"User-Agent", "test/1"},
                     {"Accept-Encoding", "gzip"}});
    ASSERT_EQ(res.result_int(), 200) << res.body();
    EXPECT_EQ(res[http::field::set_cookie], "");
    EXPECT_EQ(res["x-request-id"], "req-1");
    auto got = fake_->received();
    ASSERT_EQ(got.size(), 1u);
    const auto& r = got[0];
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/v1/chat/completions");
    EXPECT_EQ(r.body, R"({"messages":[{"role":"user","content":"hi"}],"model":"gpt-configured"})");
    EXPECT_EQ(r.headers.at("authorization"), std::vector<std::string>{"Bearer sk-provider-secret-0001"});
    EXPECT_FALSE(r.has("x-api-key"));
    EXPECT_FALSE(r.has("cookie"));
    EXPECT_FALSE(r.has("x-custom"));
    EXPECT_FALSE(r.has("openai-organization")) << "the billed organisation is the provider's choice";
    EXPECT_EQ(r.header("user-agent"), "test/1");
    EXPECT_EQ(r.header("accept-encoding"), "identity") << "usage must stay readable";
    EXPECT_EQ(r.header("host"), "127.0.0.1:" + std::to_string(fake_->port()));
    auto l = wait_logs(1);
    ASSERT_EQ(l.size(), 1u);
    EXPECT_EQ(l[0].conn.cgroup_id, 4242u);
    EXPECT_EQ(l[0].model_used, "gpt-configured");
    EXPECT_EQ(l[0].status, 200);
    EXPECT_EQ(l[0].usage.total(), 7u);
    auto line = request_log_json(l[0]);
    EXPECT_FALSE(contains(line, "sk-provider-secret")) << line;
    // The record says the credential went with the call, by header and key name only.
    EXPECT_TRUE(contains(line, R"("credential":"injected","credential_header":"authorization")")) << line;
    EXPECT_FALSE(contains(line, "hi")) << line;
}

TEST_P(GatewayTest, ReplacesClientModel) {
    use_openai("gpt-configured");
    start();
    auto res = post("/v1/embeddings", R"({"model":"text-embedding-3-small","input":"x"})");
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_EQ(fake_->received().at(0).body, R"({"model":"gpt-configured","input":"x"})");
    EXPECT_EQ(fake_->received().at(0).target, "/v1/embeddings");
    EXPECT_EQ(wait_logs(1).at(0).model_requested, "text-embedding-3-small");
}

TEST_P(GatewayTest, AnthropicKeyDefaultsAndQuery) {
    use("anthropic", "claude-configured", {{"ANTHROPIC_API_KEY", "sk-ant-provider-secret"}}, "");
    start();
    auto res = post("/v1/messages?beta=true&key=leak", R"({"model":"claude-x","max_tokens":5,"messages":[]})",
                    {{"x-api-key", "sandbox-dummy"}, {"Authorization", "Bearer x"}, {"anthropic-beta", "b1"}});
    ASSERT_EQ(res.result_int(), 200) << res.body();
    auto r = fake_->received().at(0);
    EXPECT_EQ(r.target, "/v1/messages?beta=true");
    EXPECT_EQ(r.headers.at("x-api-key"), std::vector<std::string>{"sk-ant-provider-secret"});
    EXPECT_FALSE(r.has("authorization"));
    EXPECT_EQ(r.header("anthropic-version"), "2023-06-01");
    EXPECT_EQ(r.header("anthropic-beta"), "b1");
    // The client's own allowed header wins over the default.
    post("/v1/messages", R"({"messages":[]})", {{"anthropic-version", "2099-12-31"}});
    EXPECT_EQ(fake_->received().at(1).header("anthropic-version"), "2099-12-31");
}

TEST_P(GatewayTest, ProviderRejectingTheCredentialIsReportedWithoutEchoingIt) {
    use_openai();
    start();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        std::string body = R"({"error":{"message":"Incorrect API key provided: sk-provider-****0001"}})";
        return c.write("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 401);
    EXPECT_FALSE(contains(res.body(), "0001")) << res.body();
    EXPECT_TRUE(contains(res.body(), "redirctl provider update p")) << res.body();
    EXPECT_TRUE(contains(res.body(), "authentication_error")) << res.body();
}

TEST_P(GatewayTest, ProviderErrorsPassThrough) {
    use_openai();
    start();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        std::string body = R"({"error":{"message":"Rate limit reached","type":"requests"}})";
        return c.write("HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
                       "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 429);
    EXPECT_EQ(res["retry-after"], "7");
    EXPECT_TRUE(contains(res.body(), "Rate limit reached"));
}

TEST_P(GatewayTest, FamilyMismatchIs400) {
    use("anthropic", "claude", {{"ANTHROPIC_API_KEY", "sk-ant-provider-secret"}}, "");
    start();
    auto res = post("/v1/chat/completions", R"({"messages":[]})");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_TRUE(contains(res.body(), "does not speak the OpenAI Chat Completions API")) << res.body();
    EXPECT_TRUE(contains(res.body(), R"("type":"invalid_request_error")"));
    EXPECT_TRUE(fake_->received().empty());
}

TEST_P(GatewayTest, BadBodiesAre400) {
    use_openai();
    start();
    auto res = post("/v1/chat/completions", R"({"model":"a","messages":[],"model":"b"})");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_TRUE(contains(res.body(), "repeats the top-level key")) << res.body();
    res = post("/v1/chat/completions", R"([{"model":"a"}])");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_TRUE(contains(res.body(), "JSON object")) << res.body();
    res = post("/v1/messages", "not json");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_TRUE(contains(res.body(), R"("type":"error")")) << "Anthropic shape: " << res.body();
    EXPECT_TRUE(fake_->received().empty());
}

TEST_P(GatewayTest, UnknownPathsAre404InTheApiShape) {
    use_openai();
    start();
    auto res = post("/v1/images/generations", "{}");
    EXPECT_EQ(res.result_int(), 404);
    EXPECT_TRUE(contains(res.body(), R"({"error":{"message":"no such endpoint)")) << res.body();
    res = post("/v1/messages/batches", "{}");
    EXPECT_EQ(res.result_int(), 404);
    EXPECT_TRUE(contains(res.body(), R"({"type":"error","error":{"type":"not_found_error")")) << res.body();
    res = get("/v1/chat/completions");
    EXPECT_EQ(res.result_int(), 405);
    EXPECT_EQ(res[http::field::allow], "POST");
}

TEST_P(GatewayTest, UnconfiguredIs503) {
    start();
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 503);
    EXPECT_TRUE(contains(res.body(), "redirctl inference set")) << res.body();
    res = get("/v1/models");
    EXPECT_EQ(res.result_int(), 503);
}

TEST_P(GatewayTest, ModelsFromConfiguration) {
    use_openai("gpt-configured");
    start();
    auto res = get("https://inference.local/v1/models?limit=5");  // absolute form
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_TRUE(contains(res.body(), R"("id":"gpt-configured")")) << res.body();
    EXPECT_TRUE(contains(res.body(), R"("object":"list")"));
    res = get("/v1/models/gpt-configured");
    EXPECT_EQ(res.result_int(), 200);
    res = get("/v1/models/other");
    EXPECT_EQ(res.result_int(), 404);
    res = get("/v1/models", {{"anthropic-version", "2023-06-01"}});
    EXPECT_TRUE(contains(res.body(), R"("type":"model")")) << res.body();
    EXPECT_TRUE(fake_->received().empty());
}

// The provider sends 5 events 200 ms apart; each must reach the client
// before the next one is even sent.
TEST_P(GatewayTest, StreamsEachEventAsItArrives) {
    use_openai();
    start();
    std::mutex mu;
    std::vector<Clock::time_point> sent;
    fake_->set_handler([&](const Received&, FakeProvider::Conn& c) {
        if (!c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"))
            return false;
        for (int i = 0; i < 5; ++i) {
            if (i) std::this_thread::sleep_for(200ms);
            std::string ev = "data: {\"seq\":" + std::to_string(i) + "}\n\n";
            {
                std::lock_guard lk(mu);
                sent.push_back(Clock::now());
            }
            char hex[16];
            snprintf(hex, sizeof hex, "%zx\r\n", ev.size());
            if (!c.write(hex + ev + "\r\n")) return false;
        }
        std::string done = "data: [DONE]\n\n";
        char hex[16];
        snprintf(hex, sizeof hex, "%zx\r\n", done.size());
        return c.write(hex + done + "\r\n0\r\n\r\n");
    });
    auto s = connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "inference.local");
    req.body() = R"({"stream":true,"messages":[]})";
    req.prepare_payload();
    http::write(s, req);
    std::string got;
    std::vector<Clock::time_point> arrived(5);
    int next = 0;
    char b[4096];
    beast::error_code ec;
    while (!contains(got, "[DONE]")) {
        std::size_t n = s.read_some(asio::buffer(b), ec);
        ASSERT_FALSE(ec) << ec.message();
        got.append(b, n);
        while (next < 5 && contains(got, "\"seq\":" + std::to_string(next))) arrived[next++] = Clock::now();
    }
    ASSERT_EQ(next, 5);
    std::lock_guard lk(mu);
    ASSERT_EQ(sent.size(), 5u);
    for (int i = 0; i < 4; ++i)
        EXPECT_LT(arrived[i], sent[i + 1]) << "event " << i << " was held back until event " << i + 1 << " was sent";
    EXPECT_TRUE(contains(got, "text/event-stream"));
    EXPECT_TRUE(contains(got, "Transfer-Encoding: chunked"));
}

TEST_P(GatewayTest, CompressedBodiesAreRelayedUntouched) {
    use_openai();
    start();
    // Not valid gzip on purpose: the gateway must not look inside.
    const std::string bytes("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\x00\x01\x02", 14);
    fake_->set_handler([&](const Received& r, FakeProvider::Conn& c) {
        EXPECT_EQ(r.header("accept-encoding"), "identity");
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                       "Content-Length: 14\r\n\r\n" + bytes);
    });
    auto res = post("/v1/chat/completions", "{}", {{"Accept-Encoding", "gzip, br"}});
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_EQ(res[http::field::content_encoding], "gzip");
    EXPECT_EQ(res[http::field::content_length], "14");
    EXPECT_EQ(res.body(), bytes);
}

TEST_P(GatewayTest, UsageFromTheFinalSseChunkIsLogged) {
    use_openai();
    start();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n" +
                       chunk("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n") +
                       chunk("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,") +
                       chunk("\"completion_tokens\":1,\"total_tokens\":10}}\n\n") + chunk("data: [DONE]\n\n") +
                       "0\r\n\r\n");
    });
    auto res = post("/v1/chat/completions", R"({"stream":true,"stream_options":{"include_usage":true}})");
    EXPECT_EQ(res.result_int(), 200);
    auto l = wait_logs(1);
    ASSERT_EQ(l.size(), 1u);
    EXPECT_TRUE(l[0].stream);
    EXPECT_EQ(l[0].usage.input_tokens, 9u);
    EXPECT_EQ(l[0].usage.output_tokens, 1u);
    EXPECT_EQ(l[0].bytes_out, res.body().size());
}

TEST_P(GatewayTest, ProviderBreakingOffMidStreamEndsWithErrorEvent) {
    use("anthropic", "claude", {{"ANTHROPIC_API_KEY", "sk-ant-provider-secret"}}, "");
    start();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        std::string ev = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n";
        char hex[16];
        snprintf(hex, sizeof hex, "%zx\r\n", ev.size());
        c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
                std::string(hex) + ev + "\r\n");
        return false;  // hang up without the last chunk
    });
    auto res = post("/v1/messages", R"({"stream":true,"messages":[]})");
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_TRUE(contains(res.body(), "message_start"));
    auto pos = res.body().rfind("event: error\ndata: ");
    ASSERT_NE(pos, std::string::npos) << res.body();
    EXPECT_TRUE(contains(res.body().substr(pos), R"({"type":"error","error":{"type":"api_error")")) << res.body();
    EXPECT_TRUE(contains(res.body().substr(pos), "broke off")) << res.body();
}

TEST_P(GatewayTest, ProviderDownIs502) {
    // Bound (so the port stays ours) but not listening: every connect is refused.
    tcp::socket held(client_io_);
    held.open(tcp::v4());
    held.bind({kLoopback, 0});
    const uint16_t port = held.local_endpoint().port();
    store_->create_provider(Provider{"p", "openai", "https://127.0.0.1:" + std::to_string(port) + "/v1", ca_file_,
                                     {{"OPENAI_API_KEY", "sk-provider-secret-0001"}}});
    store_->set_inference("p", "m");
    start();
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 502);
    EXPECT_TRUE(contains(res.body(), "cannot connect to provider p")) << res.body();
    EXPECT_FALSE(contains(res.body(), "sk-provider-secret"));
}

TEST_P(GatewayTest, SilentProviderIs504) {
    use_openai();
    GatewayOptions o;
    o.upstream_response_timeout = 300ms;
    start(o);
    fake_->set_handler([this](const Received&, FakeProvider::Conn&) {
        fake_->idle(3s);
        return false;
    });
    auto t0 = Clock::now();
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 504);
    EXPECT_TRUE(contains(res.body(), "did not answer within 300 ms")) << res.body();
    EXPECT_LT(Clock::now() - t0, 2s);
}

TEST_P(GatewayTest, StreamIdleTimeoutBetweenChunks) {
    use_openai();
    GatewayOptions o;
    o.stream_idle_timeout = 300ms;
    start(o);
    fake_->set_handler([this](const Received&, FakeProvider::Conn& c) {
        c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk("data: 1\n\n"));
        fake_->idle(3s);
        return false;
    });
    auto res = post("/v1/chat/completions", R"({"stream":true})");
    EXPECT_TRUE(contains(res.body(), "data: 1")) << res.body();
    EXPECT_TRUE(contains(res.body(), "event: error")) << res.body();
    EXPECT_TRUE(contains(res.body(), "sent nothing for 300 ms")) << res.body();
}

TEST_P(GatewayTest, UntrustedProviderCertificateIs502) {
    store_->create_provider(
        Provider{"p", "openai", provider_url(), "", {{"OPENAI_API_KEY", "sk-provider-secret-0001"}}});
    store_->set_inference("p", "m");
    start();
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 502);
    EXPECT_TRUE(contains(res.body(), "TLS verification of provider p")) << res.body();
    EXPECT_TRUE(fake_->received().empty());
}

TEST_P(GatewayTest, ProviderNameIsVerified) {
    // Right CA, but the certificate names provider.test, not other.test.
    GatewayOptions o;
    o.resolve_overrides = {{"provider.test", "127.0.0.1"}, {"other.test", "127.0.0.1"}};
    store_->create_provider(Provider{"good", "openai", "https://provider.test:" + std::to_string(fake_->port()) + "/v1",
                                     ca_file_, {{"OPENAI_API_KEY", "sk-provider-secret-0001"}}});
    store_->create_provider(Provider{"bad", "openai", "https://other.test:" + std::to_string(fake_->port()) + "/v1",
                                     ca_file_, {{"OPENAI_API_KEY", "sk-provider-secret-0001"}}});
    store_->set_inference("good", "m");
    start(o);
    EXPECT_EQ(post("/v1/chat/completions", "{}").result_int(), 200);
    EXPECT_EQ(fake_->received().at(0).header("host"), "provider.test:" + std::to_string(fake_->port()));
    store_->set_inference("bad", "m");
    auto res = post("/v1/chat/completions", "{}");
    EXPECT_EQ(res.result_int(), 502);
    EXPECT_TRUE(contains(res.body(), "TLS verification of provider bad")) << res.body();
}

TEST_P(GatewayTest, HeaderTooLargeIs431) {
    use_openai();
    GatewayOptions o;
    o.header_limit = 4096;
    start(o);
    auto out = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nX-Big: " + std::string(8000, 'a') +
                   "\r\nContent-Length: 2\r\n\r\n{}");
    EXPECT_EQ(out.rfind("HTTP/1.1 431", 0), 0u) << out.substr(0, 200);
}

TEST_P(GatewayTest, BodyTooLargeIs413) {
    use_openai();
    GatewayOptions o;
    o.body_limit = 1000;
    start(o);
    auto out = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 5000\r\n\r\n" +
                   std::string(5000, ' '));
    EXPECT_EQ(out.rfind("HTTP/1.1 413", 0), 0u) << out.substr(0, 200);
    std::string chunk(800, ' ');
    out = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nTransfer-Encoding: chunked\r\n\r\n"
              "320\r\n" + chunk + "\r\n320\r\n" + chunk + "\r\n0\r\n\r\n");
    EXPECT_EQ(out.rfind("HTTP/1.1 413", 0), 0u) << out.substr(0, 200);
    EXPECT_TRUE(fake_->received().empty());
}

TEST_P(GatewayTest, ChunkedRequestBodyIsAccepted) {
    use_openai("m");
    start();
    auto out = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nTransfer-Encoding: chunked\r\n"
                   "Connection: close\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
                   false);
    EXPECT_EQ(out.rfind("HTTP/1.1 200", 0), 0u) << out.substr(0, 300);
    EXPECT_EQ(fake_->received().at(0).body, R"({"a":1,"model":"m"})");
}

// Each variant must be refused with 400 (or the connection closed) and must
// never reach the provider.
TEST_P(GatewayTest, SmugglingVariantsAreRefused) {
    use_openai();
    start();
    const std::string body = "{}";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"CL and TE", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: 2\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
        {"TE and CL", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Length: 2\r\n\r\n0\r\n\r\n"},
        {"two CLs", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"},
        {"CL list", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: 2, 3\r\n\r\n{}x"},
        {"TE gzip", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: gzip\r\n\r\n{}"},
        {"TE gzip, chunked", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                             "2\r\n{}\r\n0\r\n\r\n"},
        {"TE twice", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: chunked\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
        {"TE split", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: identity\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
        {"TE xchunked", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: xchunked\r\n\r\n{}"},
        {"obs-fold", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\n{}"},
        {"obs-fold TE", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
                        "2\r\n{}\r\n0\r\n\r\n"},
        {"bare LF", "POST /v1/chat/completions HTTP/1.1\nHost: i\nContent-Length: 2\n\n{}"},
        {"bare LF in header", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\nContent-Length: 2\r\n\r\n{}"},
        {"bare CR", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\rContent-Length: 2\r\n\r\n{}"},
        {"space before colon", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length : 2\r\n\r\n{}"},
        {"negative CL", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: -2\r\n\r\n{}"},
        {"bad chunk size", "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "zz\r\n{}\r\n0\r\n\r\n"},
        {"no Host", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"},
        {"two Hosts", "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}"},
    };
    for (const auto& [name, bytes] : cases) {
        auto out = raw(bytes);
        EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << name << ": refused with a 400, got: " << out.substr(0, 300);
        EXPECT_EQ(out.find("HTTP/1.1 200"), std::string::npos) << name;
    }
    EXPECT_TRUE(fake_->received().empty());
}

TEST_P(GatewayTest, KeepAliveServesManyRequestsAndReusesProviderConnection) {
    use_openai();
    start();
    auto s = connect();
    for (int i = 0; i < 3; ++i) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = "{}";
        auto res = roundtrip(s, req);
        EXPECT_EQ(res.result_int(), 200);
        EXPECT_TRUE(res.keep_alive());
    }
    auto res = roundtrip(s, http::request<http::string_body>{http::verb::get, "/v1/models", 11});
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_EQ(fake_->received().size(), 3u);
    EXPECT_EQ(fake_->connections(), 1) << "the provider connection is pooled";
}

// All four header field sets of a proxied request (the sandbox's request,
// the provider request, the provider's answer, the answer relayed) live in
// the connection's arena. Headers too many for its inline buffer still go
// through whole, in order, both ways; the heap the arena took for them is
// given back after each request, and a small request after a big one on the
// same connection is served from the inline buffer again.
TEST_P(GatewayTest, HeadersBeyondTheRequestArenaGoThroughAndItsHeapIsGivenBack) {
    use_openai();
    std::string provider_headers;
    // 60 of each way: Beast's own parsers here (the test's) take 8 KiB of header.
    for (int i = 0; i < 60; ++i)
        provider_headers += "X-Provider-" + std::to_string(i) + ": " + std::string(80, 'p') + "\r\n";
    fake_->set_handler([&](const Received&, FakeProvider::Conn& c) {
        const std::string body = R"({"id":"x","choices":[]})";
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + provider_headers +
                       "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    start();
    const auto& st = gw_->stats();
    auto s = connect();
    for (int round = 0; round < 3; ++round) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = "{}";
        for (int i = 0; i < 60; ++i)
            req.insert(http::field::accept, "application/json; v=" + std::to_string(i) + std::string(70, 'a'));
        auto res = roundtrip(s, req);
        ASSERT_EQ(res.result_int(), 200) << res.body();
        EXPECT_EQ(res[http::field::content_type], "application/json");
        EXPECT_EQ(res["x-provider-0"], std::string(80, 'p'));
        EXPECT_EQ(res["x-provider-59"], std::string(80, 'p'));
        EXPECT_EQ(res.count("x-provider-37"), 1u);
        const auto got = fake_->received().back();
        ASSERT_EQ(got.headers.at("accept").size(), 60u) << "every allowlisted header reaches the provider";
        EXPECT_EQ(got.headers.at("accept")[59], "application/json; v=59" + std::string(70, 'a'));
        EXPECT_EQ(got.header("authorization"), "Bearer sk-provider-secret-0001");
        ASSERT_TRUE(wait_for([&] { return st.arena_heap_bytes.load() == 0; }, kPatience))
            << "round " << round << ": " << st.arena_heap_bytes.load() << " heap bytes still held";

        // A usual request in between: no heap beyond the inline buffer.
        http::request<http::string_body> small{http::verb::post, "/v1/chat/completions", 11};
        small.body() = "{}";
        fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
            return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
        });
        ASSERT_EQ(roundtrip(s, small).result_int(), 200);
        ASSERT_TRUE(wait_for([&] { return st.arena_heap_bytes.load() == 0; }, kPatience));
        fake_->set_handler([&](const Received&, FakeProvider::Conn& c) {
            const std::string body = R"({"id":"x","choices":[]})";
            return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + provider_headers +
                           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
        });
    }
    EXPECT_GT(st.arena_heap_peak.load(), 0u) << "the big requests did not fit the inline arena";
    EXPECT_EQ(fake_->connections(), 1) << "the provider connection is pooled";
}

// 40 requests at once need 40 provider connections; the next 40 at once
// find all of them idle (more than the old fixed 16 per host), so the
// provider sees no new connection and no new TLS handshake.
TEST_P(GatewayTest, ProviderConnectionsFollowThePeakConcurrency) {
    constexpr int kWave = 40;
    use_openai();
    start();
    std::mutex mu;
    std::condition_variable cv;
    int waiting = 0;
    fake_->set_handler([&](const Received&, FakeProvider::Conn& c) {
        {
            // Answer only once the whole wave is in flight (or after 5 s).
            std::unique_lock lk(mu);
            ++waiting;
            cv.notify_all();
            cv.wait_for(lk, 5s, [&] { return waiting % kWave == 0; });
        }
        const std::string body = R"({"choices":[]})";
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    auto wave = [&] {
        std::vector<std::thread> clients;
        std::atomic<int> ok{0};
        for (int i = 0; i < kWave; ++i)
            clients.emplace_back([&] {
                if (post("/v1/chat/completions", "{}").result_int() == 200) ++ok;
            });
        for (auto& t : clients) t.join();
        return ok.load();
    };
    ASSERT_EQ(wave(), kWave);
    const int first = fake_->connections();
    EXPECT_EQ(first, kWave) << "every request in flight at once has its own provider connection";
    ASSERT_EQ(wave(), kWave);
    EXPECT_EQ(fake_->connections(), first) << "the second wave reuses the first wave's idle connections";
}

// Idle provider connections are pooled by host, port and trust (the CA file
// the provider's certificate is verified against): a provider configured
// with another CA file never gets a connection verified against the first
// one's, even at the same address; each one's pool is reused.
TEST_P(GatewayTest, PooledProviderConnectionsAreNotSharedAcrossTrust) {
    use_openai();
    const std::string other_ca = dir_ + "/other-ca.pem";
    std::ofstream(other_ca) << ca_.cert_pem();
    store_->create_provider(Provider{"q", "openai", provider_url(), other_ca, {{"OPENAI_API_KEY", "sk-q"}}});
    start();
    auto s = connect();
    auto call = [&] {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = "{}";
        return roundtrip(s, req).result_int();
    };
    ASSERT_EQ(call(), 200);
    EXPECT_EQ(fake_->connections(), 1);
    store_->set_inference("q", "gpt-configured");
    ASSERT_EQ(call(), 200);
    EXPECT_EQ(fake_->connections(), 2) << "another trust: a connection of its own";
    EXPECT_EQ(fake_->received().back().header("authorization"), "Bearer sk-q");
    store_->set_inference("p", "gpt-configured");
    ASSERT_EQ(call(), 200);
    store_->set_inference("q", "gpt-configured");
    ASSERT_EQ(call(), 200);
    EXPECT_EQ(fake_->connections(), 2) << "each provider's idle connection is reused";
}

// What the sandbox reads, byte for byte (the relay writes its head by hand,
// wire.hpp): the provider's status line, its end-to-end headers with names
// lower-cased and values trimmed, the gateway's own framing once, and the
// body — with a length, chunked (the last chunk closing it), or none (204).
TEST_P(GatewayTest, RelayedResponseBytesAreExact) {
    use_openai();
    start();
    // Not half-closed: a sandbox's FIN while the provider works is a hang-up.
    const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nConnection: close\r\n"
                            "Content-Length: 2\r\n\r\n{}";
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 201 Made\r\nContent-Type: application/json\r\nX-Request-Id:  r1 \r\n"
                       "Set-Cookie: a=b\r\nContent-Length: 2\r\n\r\n{}");
    });
    EXPECT_EQ(raw(req, false), "HTTP/1.1 201 Made\r\ncontent-type: application/json\r\nx-request-id: r1\r\n"
                        "Content-Length: 2\r\nConnection: close\r\n\r\n{}");
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "f\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n");
    });
    EXPECT_EQ(raw(req, false), "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                        "Connection: close\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n");
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
    });
    EXPECT_EQ(raw(req, false), "HTTP/1.1 204 No Content\r\nx-a: 1\r\nConnection: close\r\n\r\n");
}

// Names listed in the provider's Connection header are hop-by-hop: not
// relayed. `Connection: keep-alive` alone drops nothing else.
TEST_P(GatewayTest, ProviderConnectionTokensNameHeadersThatAreNotRelayed) {
    use_openai();
    auto answer_with = [&](std::string connection) {
        fake_->set_handler([connection](const Received&, FakeProvider::Conn& c) {
            return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: " + connection +
                           "\r\nKeep-Alive: timeout=5\r\nX-Hop: hop\r\nX-Kept: kept\r\nContent-Length: 2\r\n\r\n{}");
        });
    };
    answer_with("keep-alive, X-Hop");
    start();
    auto res = post("/v1/chat/completions", "{}");
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_EQ(res.count("x-hop"), 0u);
    EXPECT_EQ(res.count("keep-alive"), 0u);
    EXPECT_EQ(res["x-kept"], "kept");
    answer_with(" Keep-Alive ");
    res = post("/v1/chat/completions", "{}");
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_EQ(res["x-hop"], "hop") << "not named by the Connection header this time";
    EXPECT_EQ(res.count("keep-alive"), 0u);
    EXPECT_EQ(res["x-kept"], "kept");
}

TEST_P(GatewayTest, PipelinedRequestsAreAnsweredInOrder) {
    use("mock", "m", {});
    start();
    std::string one = "POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nContent-Length: 2\r\n\r\n{}";
    std::string two = "GET /v1/models HTTP/1.1\r\nHost: i\r\nConnection: close\r\n\r\n";
    auto out = raw(one + two);
    auto first = out.find("HTTP/1.1 200");
    auto second = out.find("HTTP/1.1 200", first + 1);
    EXPECT_NE(first, std::string::npos);
    EXPECT_NE(second, std::string::npos) << out;
    EXPECT_TRUE(contains(out, "chat.completion"));
    EXPECT_TRUE(contains(out, R"("object":"list")"));
}

TEST_P(GatewayTest, Expect100Continue) {
    use_openai("m");
    start();
    auto s = connect();
    asio::write(s, asio::buffer(std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\nExpect: 100-continue\r\n"
                                            "Content-Length: 2\r\n\r\n")));
    char b[256];
    std::size_t n = s.read_some(asio::buffer(b));
    EXPECT_EQ(std::string(b, n), "HTTP/1.1 100 Continue\r\n\r\n");
    asio::write(s, asio::buffer(std::string("{}")));
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(s, buf, res);
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_EQ(fake_->received().at(0).body, R"({"model":"m"})");
    // Refused before the body: the final status comes instead of 100.
    auto out = raw("POST /v1/nope HTTP/1.1\r\nHost: i\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", false);
    EXPECT_EQ(out.rfind("HTTP/1.1 404", 0), 0u) << out;
}

TEST_P(GatewayTest, ConfigChangeAppliesToNextRequest) {
    use("mock", "model-a", {});
    start();
    auto s = connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = R"({"model":"whatever"})";
    auto res = roundtrip(s, req);
    EXPECT_TRUE(contains(res.body(), R"("model":"model-a")")) << res.body();
    store_->update_inference(std::nullopt, "model-b");
    res = roundtrip(s, req);
    EXPECT_TRUE(contains(res.body(), R"("model":"model-b")")) << res.body();
    auto l = wait_logs(2);
    ASSERT_EQ(l.size(), 2u);
    EXPECT_EQ(l[1].config_version, l[0].config_version + 1);
}

// The connection reuses its sandbox's policy and its route's snapshot while
// nothing changed (DecisionCache): a policy reload, an attach or a detach
// (the agent publishes a new SandboxInferenceTable) must reach the next
// request on a kept-alive connection all the same.
TEST_P(GatewayTest, PolicyChangeAppliesToTheNextRequestOnTheSameConnection) {
    use("mock", "model-a", {});
    store_->set_inference("p", "model-fast", "fast");
    auto table = std::make_shared<SandboxInferenceTable>();
    GatewayOptions o;
    o.sandbox_inference = [table](std::uint64_t cg) { return table->find(cg); };
    o.sandbox_inference_generation = [table] { return table->generation(); };
    start(o);
    auto s = connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = R"({"model":"whatever"})";
    auto model_of = [&] {
        auto res = roundtrip(s, req);
        EXPECT_EQ(res.result_int(), 200) << res.body();
        auto at = res.body().find(R"("model":")");
        return at == std::string::npos ? res.body() : res.body().substr(at + 9, res.body().find('"', at + 9) - at - 9);
    };
    EXPECT_EQ(model_of(), "model-a");
    EXPECT_EQ(model_of(), "model-a");
    table->publish({{4242, SandboxInference{"fast", false, {}}}});  // reload: the policy names route fast
    EXPECT_EQ(model_of(), "model-fast");
    EXPECT_EQ(model_of(), "model-fast");
    table->publish({{9999, SandboxInference{"fast", false, {}}}});  // this sandbox detached, another attached
    EXPECT_EQ(model_of(), "model-a");
    table->publish({{4242, SandboxInference{"not-set", false, {}}}});
    auto res = roundtrip(s, req);
    EXPECT_EQ(res.result_int(), 503) << res.body();
    EXPECT_TRUE(contains(res.body(), "not-set")) << res.body();
    store_->set_inference("p", "model-late", "not-set");  // the route configured: the next request is served
    EXPECT_EQ(model_of(), "model-late");
    auto l = wait_logs(7);
    ASSERT_EQ(l.size(), 7u);
    const char* routes[] = {"default", "default", "fast", "fast", "default", "not-set", "not-set"};
    for (std::size_t i = 0; i < l.size(); ++i) EXPECT_EQ(l[i].route, routes[i]) << i;
}

// A provider change (a revoked credential replaced) reaches the next request
// on a kept-alive connection: the old key is never sent again.
TEST_P(GatewayTest, ProviderChangeAppliesToTheNextRequestOnTheSameConnection) {
    use_openai();
    start();
    auto s = connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = R"({"messages":[]})";
    ASSERT_EQ(roundtrip(s, req).result_int(), 200);
    ASSERT_EQ(roundtrip(s, req).result_int(), 200);
    ProviderUpdate u;
    u.credentials["OPENAI_API_KEY"] = "sk-provider-secret-0002";
    store_->update_provider("p", u);
    ASSERT_EQ(roundtrip(s, req).result_int(), 200);
    auto got = fake_->received();
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[1].header("authorization"), "Bearer sk-provider-secret-0001");
    EXPECT_EQ(got[2].header("authorization"), "Bearer sk-provider-secret-0002");
}

// Each connection is decided under its own sandbox's settings, whatever the
// connections of other sandboxes (on the same io thread or not) were last
// decided under.
TEST_P(GatewayTest, ConnectionsOfTwoSandboxesNeverShareSettings) {
    use("mock", "model-a", {});
    store_->set_inference("p", "model-fast", "fast");
    auto table = std::make_shared<SandboxInferenceTable>();
    table->publish({{5151, SandboxInference{"fast", false, {}}}});
    GatewayOptions o;
    o.sandbox_inference = [table](std::uint64_t cg) { return table->find(cg); };
    o.sandbox_inference_generation = [table] { return table->generation(); };
    start(o);
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = R"({"model":"whatever"})";
    auto a = connect();
    ASSERT_TRUE(contains(roundtrip(a, req).body(), R"("model":"model-a")"));
    next_cgroup_ = 5151;
    auto b = connect();
    ASSERT_TRUE(contains(roundtrip(b, req).body(), R"("model":"model-fast")"));
    for (int i = 0; i < 4; ++i) {
        EXPECT_TRUE(contains(roundtrip(a, req).body(), R"("model":"model-a")")) << i;
        EXPECT_TRUE(contains(roundtrip(b, req).body(), R"("model":"model-fast")")) << i;
    }
    auto l = wait_logs(10);
    ASSERT_EQ(l.size(), 10u);
    for (const auto& r : l) EXPECT_EQ(r.route, r.conn.cgroup_id == 5151 ? "fast" : "default") << r.conn.cgroup_id;
}

// The cache fails closed: without a generation to tell whether the sandbox's
// settings changed (none given, or 0), they are asked per request.
TEST_P(GatewayTest, WithoutAGenerationThePolicyIsAskedPerRequest) {
    use("mock", "model-a", {});
    store_->set_inference("p", "model-fast", "fast");
    auto route = std::make_shared<std::string>("default");
    auto mu = std::make_shared<std::mutex>();
    auto asked = std::make_shared<std::atomic<int>>(0);
    GatewayOptions o;
    o.sandbox_inference = [route, mu, asked](std::uint64_t) {
        ++*asked;
        std::lock_guard lk(*mu);
        return SandboxInference{*route, false, {}};
    };
    if (GetParam() != 0) o.sandbox_inference_generation = [] { return std::uint64_t{0}; };
    start(o);
    auto s = connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = R"({"model":"whatever"})";
    EXPECT_TRUE(contains(roundtrip(s, req).body(), R"("model":"model-a")"));
    {
        std::lock_guard lk(*mu);
        *route = "fast";
    }
    EXPECT_TRUE(contains(roundtrip(s, req).body(), R"("model":"model-fast")"));
    EXPECT_TRUE(contains(roundtrip(s, req).body(), R"("model":"model-fast")"));
    EXPECT_EQ(asked->load(), 3);
}

TEST_P(GatewayTest, MockStreamsInBothShapes) {
    use("mock", "mock-model", {});
    start();
    auto res = post("/v1/chat/completions", R"({"stream":true})");
    EXPECT_EQ(res[http::field::content_type], "text/event-stream");
    EXPECT_TRUE(contains(res.body(), "chat.completion.chunk"));
    EXPECT_TRUE(contains(res.body(), "data: [DONE]"));
    res = post("/v1/messages", R"({"stream":true,"max_tokens":10,"messages":[]})");
    EXPECT_TRUE(contains(res.body(), "event: message_start"));
    EXPECT_TRUE(contains(res.body(), "event: message_stop"));
    res = post("/v1/messages", R"({"max_tokens":10,"messages":[]})");
    EXPECT_TRUE(contains(res.body(), R"("type":"message")"));
    EXPECT_TRUE(contains(res.body(), "mock-model"));
}

TEST_P(GatewayTest, ClientHangingUpClosesTheProviderRequest) {
    use_openai();
    start();
    auto provider_saw_close = stream_until_the_client_leaves();
    {
        auto s = connect();
        begin_stream(s);
    }
    EXPECT_TRUE(wait_for([&] { return provider_saw_close->load(); }, kPatience));
}

TEST_P(GatewayTest, ClientHangingUpBeforeTheAnswerClosesTheProviderRequest) {
    use_openai();
    start();
    std::atomic<bool> provider_has_request{false}, provider_saw_close{false};
    fake_->set_handler([&](const Received&, FakeProvider::Conn& c) {
        // Thinking for a long time before answering; notice the hang-up by
        // probing the socket.
        provider_has_request = true;
        const auto deadline = Clock::now() + kPatience;
        while (Clock::now() < deadline) {
            std::this_thread::sleep_for(20ms);
            char b;
            ssize_t n = ::recv(c.s.next_layer().native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0) {
                provider_saw_close = true;
                return false;
            }
        }
        return false;
    });
    {
        auto s = connect();
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.set(http::field::host, "i");
        req.body() = "{}";
        req.prepare_payload();
        http::write(s, req);
        // Hang up once the provider has the request: after a fixed delay a
        // slow (sanitized) gateway may still be connecting to it.
        ASSERT_TRUE(redir::test::wait_for([&] { return provider_has_request.load(); }, kPatience));
    }
    EXPECT_TRUE(redir::test::wait_for([&] { return provider_saw_close.load(); }, kPatience));
    ASSERT_TRUE(redir::test::wait_for([&] { return !logs().empty(); }, kPatience));
    ASSERT_EQ(logs().size(), 1u);
    EXPECT_EQ(logs()[0].status, 499);
}

TEST_P(GatewayTest, SlowHeaderIsCutOff) {
    use_openai();
    GatewayOptions o;
    o.header_timeout = 300ms;
    start(o);
    auto s = connect();
    asio::write(s, asio::buffer(std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: i\r\n")));
    auto t0 = Clock::now();
    std::string out;
    char b[1024];
    beast::error_code ec;
    for (;;) {
        std::size_t n = s.read_some(asio::buffer(b), ec);
        if (ec) break;
        out.append(b, n);
    }
    // Not before the header timeout (a gateway closing everything at once fails), and soon after it.
    EXPECT_GE(Clock::now() - t0, 250ms);
    EXPECT_LT(Clock::now() - t0, 2s);
    EXPECT_EQ(out, "") << "cut off without an answer";
}

TEST_P(GatewayTest, IdleConnectionIsClosed) {
    use_openai();
    GatewayOptions o;
    o.idle_timeout = 200ms;
    start(o);
    auto s = connect();
    auto t0 = Clock::now();
    char b[16];
    beast::error_code ec;
    s.read_some(asio::buffer(b), ec);
    EXPECT_EQ(ec, asio::error::eof);
    // Not before the idle timeout, and soon after it.
    EXPECT_GE(Clock::now() - t0, 150ms);
    EXPECT_LT(Clock::now() - t0, 2s);
}

// Whatever the client sends and whatever the provider answers, the access log
// record carries no credential (the sandbox's dummy nor the provider's real
// one), no prompt and no query string; the provider's 401 body quotes the key.
TEST_P(GatewayTest, AccessLogNeverCarriesSecretsOrPrompt) {
    use_openai();
    start();
    const std::vector<std::pair<std::string, std::string>> headers = {
        {"Authorization", "Bearer sandbox-bearer-MARK1"}, {"X-Api-Key", "sandbox-xkey-MARK2"}, {"Cookie", "c=MARK5"}};
    const std::string body = R"({"messages":[{"role":"user","content":"prompt-MARK4"}]})";
    auto ok = post("/v1/chat/completions?api_key=query-MARK3", body, headers);
    ASSERT_EQ(ok.result_int(), 200) << ok.body();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        std::string b = R"({"error":{"message":"Incorrect API key provided: sk-provider-secret-0001"}})";
        return c.write("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(b.size()) + "\r\n\r\n" + b);
    });
    auto refused = post("/v1/chat/completions?api_key=query-MARK3", body, headers);
    EXPECT_EQ(refused.result_int(), 401);
    auto l = wait_logs(2);
    ASSERT_EQ(l.size(), 2u);
    for (const auto& r : l) {
        auto line = request_log_json(r);
        EXPECT_NE(line.find("\"cgroup_id\":4242"), std::string::npos) << line;
        for (const char* secret : {"MARK1", "MARK2", "MARK3", "MARK4", "MARK5", "sk-provider-secret", "0001"})
            EXPECT_EQ(line.find(secret), std::string::npos) << secret << " in " << line;
    }
}

// A connection reuses its header list and its request record from one
// request to the next: nothing of a request reaches the next one's provider
// call or record — not a header the next one did not send (an
// anthropic-beta the fetch scan would refuse, an allowlisted Accept), not
// an error, a model or a status.
TEST_P(GatewayTest, NothingOfOneRequestReachesTheNextOnTheSameConnection) {
    use_openai();
    start();
    auto s = connect();
    auto send = [&](const std::string& body, std::vector<std::pair<std::string, std::string>> headers) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        for (auto& [n, v] : headers) req.set(n, v);
        req.body() = body;
        return roundtrip(s, req);
    };
    auto first = send(R"({"model":"asked-first","messages":[]})",
                      {{"Accept", "application/first"}, {"User-Agent", "agent-first/" + std::string(40, 'x')},
                       {"Anthropic-Beta", "mcp-client-2025-04-04"}});
    EXPECT_EQ(first.result_int(), 400) << "the fetch scan refuses the MCP beta";
    auto bad = send("{not json", {{"User-Agent", "agent-bad"}});
    EXPECT_EQ(bad.result_int(), 400);
    auto ok = send(R"({"model":"asked-third","messages":[]})", {{"User-Agent", "ua3"}});
    ASSERT_EQ(ok.result_int(), 200) << ok.body() << ": the first request's anthropic-beta must be gone";
    ASSERT_EQ(fake_->received().size(), 1u);
    const auto got = fake_->received().back();
    EXPECT_FALSE(got.has("accept")) << got.header("accept");
    EXPECT_FALSE(got.has("anthropic-beta"));
    EXPECT_EQ(got.headers.at("user-agent"), std::vector<std::string>{"ua3"});

    auto l = wait_logs(3);
    ASSERT_EQ(l.size(), 3u);
    EXPECT_EQ(l[0].model_requested, "asked-first");
    EXPECT_FALSE(l[0].error.empty());
    EXPECT_EQ(l[1].model_requested, "") << "a body that is not JSON names no model";
    EXPECT_NE(l[1].error, l[0].error);
    EXPECT_EQ(l[2].status, 200);
    EXPECT_EQ(l[2].model_requested, "asked-third");
    EXPECT_EQ(l[2].error, "");
    EXPECT_EQ(l[2].path, "/v1/chat/completions");
    EXPECT_TRUE(l[2].credential.has_value());
    EXPECT_FALSE(l[1].credential.has_value()) << "refused before any provider call";
    for (const auto& r : l) EXPECT_EQ(r.conn.cgroup_id, 4242u);
}

// A connection's requests share nothing of their working state: a short
// request after a long one carries no byte of the long one's rewritten body,
// a request after a refused provider fetch is scanned afresh, and an answer
// without usage is not charged the last one's. (Guards any later reuse of
// buffers, scanners or parsers from one request to the next.)
TEST_P(GatewayTest, NoWorkingStateOfOneRequestReachesTheNextOnTheSameConnection) {
    use_openai("m");
    fake_->set_handler([](const Received& r, FakeProvider::Conn& c) {
        const std::string body = r.body.find("LLLL") != std::string::npos
                                     ? R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}})"
                                     : R"({"choices":[]})";
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    start();
    auto s = connect();
    auto send = [&](const std::string& body) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = body;
        return roundtrip(s, req);
    };
    const std::string long_body =
        R"({"model":"client-model","messages":[{"role":"user","content":")" + std::string(12000, 'L') + R"("}]})";
    ASSERT_EQ(send(long_body).result_int(), 200);
    ASSERT_EQ(send(R"({"tools":[{"type":"web_search"}]})").result_int(), 400) << "the fetch scan refuses it";
    auto ok = send(R"({"a":1})");
    ASSERT_EQ(ok.result_int(), 200) << ok.body() << ": the refused request's finding must be gone";
    ASSERT_EQ(send("{}").result_int(), 200);
    ASSERT_EQ(fake_->received().size(), 3u);
    EXPECT_EQ(fake_->received().at(0).body,
              R"({"model":"m","messages":[{"role":"user","content":")" + std::string(12000, 'L') + R"("}]})");
    EXPECT_EQ(fake_->received().at(1).body, R"({"a":1,"model":"m"})") << "nothing of the long body is left";
    EXPECT_EQ(fake_->received().at(2).body, R"({"model":"m"})");
    auto l = wait_logs(4);
    ASSERT_EQ(l.size(), 4u);
    EXPECT_EQ(l[0].usage.total(), 7u);
    EXPECT_FALSE(l[2].usage.known()) << "an answer without usage is not charged the last one's";
    EXPECT_FALSE(l[3].usage.known());
    EXPECT_EQ(l[2].model_requested, "");
}

class TlsGatewayTest : public GatewayTest {
protected:
    void start_tls(GatewayOptions o = {}) {
        server_ctx_ = std::make_unique<ssl::context>(ssl::context::tls_server);
        auto leaf = ca_.issue("inference.local", "DNS:inference.local");
        server_ctx_->use_certificate_chain(asio::buffer(leaf.cert_pem));
        server_ctx_->use_private_key(asio::buffer(leaf.key_pem), ssl::context::pem);
        start(std::move(o), Mode::Tls);
        client_ctx_.add_certificate_authority(asio::buffer(ca_.cert_pem()));
        client_ctx_.set_verify_mode(ssl::verify_peer);
    }
    std::unique_ptr<ssl::stream<tcp::socket>> tls_connect() { return tls_connect(connect()); }
    // Over a socket the test connected itself (its own options).
    std::unique_ptr<ssl::stream<tcp::socket>> tls_connect(tcp::socket raw) {
        auto s = std::make_unique<ssl::stream<tcp::socket>>(std::move(raw), client_ctx_);
        SSL_set_tlsext_host_name(s->native_handle(), "inference.local");
        SSL_set1_host(s->native_handle(), "inference.local");
        s->handshake(ssl::stream_base::client);
        return s;
    }
    void start_mock_tls(GatewayOptions o) {
        use("mock", "m", {});
        start_tls(std::move(o));
    }
    // Blocks until the gateway ends the connection (a byte sent instead is an error).
    template <class Stream>
    static beast::error_code end_of(Stream& s) {
        char b;
        beast::error_code ec;
        s.read_some(asio::buffer(&b, 1), ec);
        return ec;
    }
    ssl::context client_ctx_{ssl::context::tls_client};
};

TEST_P(TlsGatewayTest, ServesHttpsWithTheGivenServerContext) {
    use("mock", "m", {});
    start_tls();
    auto sp = tls_connect();
    auto& s = *sp;
    auto res = roundtrip(s, http::request<http::string_body>{http::verb::get, "/v1/models", 11});
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_TRUE(contains(res.body(), R"("id":"m")"));
}

// The last answer of a connection that ends (Connection: close) arrives
// whole before the end: on the gateway's own threads answers are held to
// the end of the loop turn, and the close sends what is held first.
TEST_P(TlsGatewayTest, AnswerBeforeACloseArrivesWhole) {
    use_openai();
    start_tls();
    // Several records, all held when the connection closes.
    const std::string big = R"({"id":"c","choices":[],"pad":")" + std::string(40000, 'p') + R"("})";
    fake_->set_handler([big](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(big.size()) + "\r\n\r\n" + big);
    });
    for (int i = 0; i < 3; ++i) {
        auto sp = tls_connect();
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.set(http::field::connection, "close");
        req.body() = R"({"model":"x","messages":[]})";
        auto res = roundtrip(*sp, req);
        EXPECT_EQ(res.result_int(), 200);
        EXPECT_EQ(res.body(), big);
        EXPECT_TRUE(end_of(*sp)) << "the connection stayed open after Connection: close";
        // A refusal that ends the connection, too.
        auto sp2 = tls_connect();
        http::request<http::string_body> bad{http::verb::post, "/v1/not-a-route", 11};
        bad.set(http::field::connection, "close");
        auto res2 = roundtrip(*sp2, bad);
        EXPECT_EQ(res2.result_int(), 404);
    }
}

// Over TLS the client is watched while the provider streams (a concurrent
// read on the SSL stream); the connection must stay usable afterwards.
TEST_P(TlsGatewayTest, ProxiedStreamsKeepTheConnectionUsable) {
    use_openai();
    start_tls();
    fake_->set_handler([](const Received&, FakeProvider::Conn& c) {
        c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < 3; ++i) {
            std::this_thread::sleep_for(30ms);
            c.write(chunk("data: x\n\n"));
        }
        return c.write("0\r\n\r\n");
    });
    auto sp = tls_connect();
    for (int i = 0; i < 3; ++i) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = R"({"stream":true})";
        auto res = roundtrip(*sp, req);
        EXPECT_EQ(res.result_int(), 200);
        EXPECT_EQ(res.body(), "data: x\n\ndata: x\n\ndata: x\n\n");
    }
    EXPECT_EQ(fake_->connections(), 1);
}

// A stream gives its buffers back while it idles between events; once it
// is over, the connection goes on with short exchanges that keep theirs
// (left in release mode, each later record would allocate and free
// OpenSSL's ~17 KiB buffers and ours).
TEST_P(TlsGatewayTest, AfterAStreamTheConnectionKeepsItsBuffers) {
    use_openai();
    start_tls();
    fake_->set_handler([](const Received& r, FakeProvider::Conn& c) {
        if (contains(r.body, "\"stream\":true")) {
            c.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for (int i = 0; i < 3; ++i) {
                std::this_thread::sleep_for(20ms);
                c.write(chunk("data: x\n\n"));
            }
            return c.write("0\r\n\r\n");
        }
        std::string body = R"({"id":"r","choices":[]})";
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    });
    auto sp = tls_connect();
    auto request = [](std::string body) {
        http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
        req.body() = std::move(body);
        return req;
    };
    auto sse = roundtrip(*sp, request(R"({"stream":true})"));
    ASSERT_EQ(sse.result_int(), 200);
    ASSERT_EQ(sse.body(), "data: x\n\ndata: x\n\ndata: x\n\n");
    const auto before = ConnCore::read_buffers_released();
    for (int i = 0; i < 10; ++i) {
        auto res = roundtrip(*sp, request("{}"));
        ASSERT_EQ(res.result_int(), 200);
    }
    EXPECT_EQ(ConnCore::read_buffers_released() - before, 0u)
        << "the connection still gave its read buffer back after its stream ended";
}

TEST_P(TlsGatewayTest, ClientHangingUpOverTlsClosesTheProviderRequest) {
    use_openai();
    start_tls();
    auto provider_saw_close = stream_until_the_client_leaves();
    {
        auto sp = tls_connect();
        begin_stream(*sp);
        beast::error_code ec;
        sp->next_layer().close(ec);
    }
    EXPECT_TRUE(wait_for([&] { return provider_saw_close->load(); }, kPatience));
}

// A sandbox that asks for a large answer and stops reading it cannot hold
// the connection (and the provider's) open: the answer's writes go straight
// to the socket while it takes them, and once it stops, the wait for it ends
// at the write timeout.
TEST_P(TlsGatewayTest, SandboxThatStopsReadingIsCutAtTheWriteTimeout) {
    use_openai();
    GatewayOptions o;
    o.write_timeout = 300ms;
    start_tls(std::move(o));
    const std::size_t size = 32u << 20;  // far more than the socket buffers on both sides hold
    fake_->set_handler([size](const Received&, FakeProvider::Conn& c) {
        if (!c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                     std::to_string(size) + "\r\n\r\n"))
            return false;
        const std::string piece(64 << 10, 'a');
        for (std::size_t sent = 0; sent < size; sent += piece.size())
            if (!c.write(piece)) return false;  // the gateway dropped the call
        return true;
    });
    auto sp = tls_connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "inference.local");
    req.body() = R"({"model":"x"})";
    req.prepare_payload();
    http::write(*sp, req);  // and never a read
    EXPECT_TRUE(wait_for([&] { return gw_->stats().write_timeouts.load() >= 1; }, kPatience))
        << "the gateway kept writing to a sandbox that stopped reading";
    EXPECT_TRUE(wait_for([&] { return gw_->connections() == 0; }, kPatience)) << "the connection was kept";
}

// The same when the answer the sandbox stops reading at was small enough to
// be held whole to the end of the loop turn: what the socket does not take
// then leaves in the background while the session already waits for the
// next request, under the idle deadline. That flush has the write timeout
// too, or a sandbox that stops reading right there would keep the
// connection until the idle timeout (or until its next request's answer
// found the socket full).
TEST_P(TlsGatewayTest, SandboxThatStopsReadingItsLastAnswerIsCutAtTheWriteTimeout) {
    if (GetParam() == 0) GTEST_SKIP() << "answers are held to the end of the turn only on the gateway's own threads";
    use_openai();
    GatewayOptions o;
    o.write_timeout = 300ms;
    o.idle_timeout = 10min;
    start_tls(std::move(o));
    // Small enough to come in the provider's first read with its header:
    // one piece, one held write.
    const std::string answer = R"({"id":"c","choices":[],"pad":")" + std::string(400, 'p') + R"("})";
    fake_->set_handler([answer](const Received&, FakeProvider::Conn& c) {
        return c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(answer.size()) + "\r\n\r\n" + answer);
    });
    // The smallest buffers on both sides (the gateway's socket inherits the
    // listener's): a handful of unread answers fill them.
    acceptor_.set_option(asio::socket_base::send_buffer_size(1));
    tcp::socket raw(client_io_);
    raw.open(tcp::v4());
    raw.set_option(asio::socket_base::receive_buffer_size(1));
    raw.connect({kLoopback, acceptor_.local_endpoint().port()});
    auto sp = tls_connect(std::move(raw));
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "inference.local");
    req.body() = R"({"model":"x"})";
    req.prepare_payload();
    // Requests, never a read, one at a time. Whenever an answer's held
    // records are left to the background flush, no next request until that
    // flush has either drained (the socket took the rest: go on) or ended
    // the connection; one that does neither is what this test is about.
    // Counted against what the process had before (the gauge is the process's).
    const auto before = ConnCore::held_flushes_waiting();
    const auto waiting = [&] { return ConnCore::held_flushes_waiting() != before; };
    bool stalled = false;
    for (std::size_t sent = 1; sent <= 2000 && gw_->connections() != 0; ++sent) {
        http::write(*sp, req);
        ASSERT_TRUE(wait_for([&] { return logs().size() >= sent || gw_->connections() == 0; }, kPatience));
        std::this_thread::sleep_for(20ms);  // the answer is logged before its turn ends and it is sent
        if (!waiting()) continue;
        stalled = true;
        wait_for([&] { return gw_->connections() == 0 || !waiting(); }, 2s);
        ASSERT_FALSE(gw_->connections() != 0 && waiting())
            << "answer " << sent << " has waited for a sandbox that stopped reading beyond the write timeout";
    }
    EXPECT_TRUE(stalled) << "no answer was ever left to the background flush: the test did not test it";
    EXPECT_EQ(gw_->connections(), 0u);
    EXPECT_GE(gw_->stats().write_timeouts.load(), 1u);
}

// A sandbox that opens connections and never says hello holds nothing past
// the handshake deadline (the TLS stream's own deadline, not Beast's).
TEST_P(TlsGatewayTest, SilentClientIsDroppedAtTheHandshakeTimeout) {
    GatewayOptions o;
    o.handshake_timeout = 200ms;
    start_mock_tls(std::move(o));
    auto s = connect();
    EXPECT_EQ(end_of(s), asio::error::eof);
    EXPECT_TRUE(wait_for([&] { return gw_->stats().tls_handshake_timeouts.load() == 1; }));
}

// Slowloris over TLS: a header that never ends is cut at the header deadline.
TEST_P(TlsGatewayTest, UnfinishedHeaderOverTlsIsCutAtTheHeaderTimeout) {
    GatewayOptions o;
    o.header_timeout = 300ms;
    start_mock_tls(std::move(o));
    auto sp = tls_connect();
    asio::write(*sp, asio::buffer(std::string("GET /v1/models HTTP/1.1\r\nHost: inference.local\r\n")));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(end_of(*sp)) << "the gateway answered an unfinished header";  // no answer: the connection ends
    EXPECT_LT(std::chrono::steady_clock::now() - t0, kPatience);
}

TEST_P(GatewayTest, PlainHttpIsRefusedWithAPointerToHttps) {
    use("mock", "m", {});
    start({}, Mode::Refusal);
    auto out = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 2\r\n\r\n{}");
    EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << out;
    EXPECT_TRUE(contains(out, "https://inference.local/v1")) << out;
}

INSTANTIATE_TEST_SUITE_P(CallersThread, GatewayTest, ::testing::Values(0));
INSTANTIATE_TEST_SUITE_P(OwnThreads, GatewayTest, ::testing::Values(2));
INSTANTIATE_TEST_SUITE_P(CallersThread, TlsGatewayTest, ::testing::Values(0));
INSTANTIATE_TEST_SUITE_P(OwnThreads, TlsGatewayTest, ::testing::Values(2));

}  // namespace
}  // namespace redir::terminator
