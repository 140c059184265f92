#pragma once
// Prometheus text exposition of the agent's counters on --metrics ADDR:PORT.
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <string>

namespace redir::agent {

class MetricsServer {
public:
    // RENDER returns the exposition text; called on the io thread per scrape.
    MetricsServer(boost::asio::io_context& io, const std::string& addr_port, std::function<std::string()> render);
    ~MetricsServer();

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace redir::agent
