"""The mutants: for each guarded security property, an edit that removes the
guard and the named test that must fail with it applied (tests/mutation/run.py).

Each edit replaces one small, exact code fragment; when the fragment is no
longer in the file (the code moved on), the run fails with "mutant does not
apply" naming the file and fragment, so the mutant is updated, never skipped.
`ci=True` mutants are the cheap ones CTest runs (label `mutation`): their
libraries (TLS, policy) build in well under a minute from cold; the others
need the gateway (Boost.Beast, minutes to compile) or root and BPF.

test: ("gtest", <binary under build/>, <gtest filter>, <build targets>)
      ("e2e", <module>, <class>, <method>, <build targets>)
      ("sanitized-e2e", <module>, <class>, <method>, []): the e2e test against
      the soak's ASan + UBSan build (tests/soak/build_sanitized.sh)
"""
from dataclasses import dataclass


@dataclass
class Mutant:
    id: str
    prop: str          # the security property, as docs/threat-model.md names it
    file: str          # path from the repository root
    find: str          # exact fragment that must be present once
    replace: str
    test: tuple
    ci: bool = False


def escape_e2e(name):
    """The test tuple of an escape-corpus e2e test, "module.Class.method"."""
    module, cls, method = name.split(".")
    return ("e2e", module, cls, method, ["redird", "redirctl", "escape_probe"])



def limits_mutant(id, prop, layer, find, replace, test):
    """A guard of the inference limits in userspace/LAYER/inference_limits.cpp,
    killed by test_limits.TEST ("Class.method"; none of them needs Node)."""
    cls, method = test.split(".")
    return Mutant(id, "inference limits: " + prop, "userspace/%s/inference_limits.cpp" % layer, find, replace,
                  ("e2e", "test_limits", cls, method, ["redird", "redirctl"]))

MUTANTS = [
    Mutant("tls-min-version", "TLS 1.2 minimum on the inference front",
           "userspace/tls/leaf_cache.cpp",
           'ensure(SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION), "cannot set minimum TLS version");',
           "/* mutant: no TLS 1.2 minimum */",
           ("gtest", "tests/unit/tls/redir_tls_tests", "HandshakeTest.OlderThanTls12IsRefusedBecauseOfTheVersion",
            ["redir_tls_tests"]), ci=True),
    Mutant("tls-cbc-suites", "only AEAD forward-secret suites for TLS 1.2",
           "userspace/tls/leaf_cache.cpp",
           '"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384"',
           '"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"',
           ("gtest", "tests/unit/tls/redir_tls_tests", "HandshakeTest.Tls12WorksWithAnAeadEcdsaSuite",
            ["redir_tls_tests"])),
    Mutant("sni-refusal", "only inference.local is served (unknown SNI refused)",
           "userspace/tls/server_context.cpp",
           "SSL_CTX_set_tlsext_servername_callback(ctx_.get(), on_servername);",
           "/* mutant: no SNI check */",
           ("gtest", "tests/unit/tls/redir_tls_tests", "HandshakeTest.UnservedSniGetsUnrecognizedNameAndFiresTheHook",
            ["redir_tls_tests"]), ci=True),
    Mutant("duplicate-key", "a request body repeating a top-level key is refused",
           "userspace/terminator/request.cpp",
           "if (!keys_.insert(k)) return false;  // a repeated top-level key",
           "if (!keys_.insert(k) && false) return false;",
           ("gtest", "tests/unit/terminator/redir_terminator_tests", "Rewrite.RejectsNonObjectsAndDuplicates",
            ["redir_terminator_tests"])),
    Mutant("fetch-scan-escaped-text", "a provider-side fetch is found however the request escapes its \"type\"",
           "userspace/terminator/request.cpp",
           "} else if (scan_->reads_string()) {",
           "} else if (false) {",
           ("gtest", "tests/unit/terminator/redir_terminator_tests",
            "ProviderFetchOnePass.HostileBodiesAreJudgedExactlyAsBefore", ["redir_terminator_tests"])),
    Mutant("usage-string-escape", "text inside a provider's JSON strings is never read as usage (an escaped quote stays inside)",
           "userspace/terminator/usage.cpp",
           "p = q + 2;",
           "p = q + 1;",
           ("gtest", "tests/unit/terminator/redir_terminator_tests", "UsageExtraction.SandboxTextCannotForgeUsage",
            ["redir_terminator_tests"])),
    Mutant("header-allowlist", "only allowlisted client headers reach the provider",
           "userspace/terminator/request.cpp",
           "return std::find(common.begin(), common.end(), n) != common.end() ||",
           "return true ||",
           ("gtest", "tests/unit/terminator/redir_terminator_tests", "Headers.AllowlistCredentialsDefaultsAndHopByHop",
            ["redir_terminator_tests"])),
    Mutant("sandbox-credential-dropped", "the sandbox's own credential headers never reach the provider",
           "userspace/terminator/request.cpp",
           "if (is_hop_by_hop(n) || conn.count(n) || is_credential_header(n) || is_account_header(n)) return false;",
           "if (is_hop_by_hop(n) || conn.count(n) || is_account_header(n)) return false;",
           ("gtest", "tests/unit/terminator/redir_terminator_tests",
            "Headers.CredentialHeadersDroppedEvenWhenAProfileNamesThem", ["redir_terminator_tests"])),
    Mutant("credential-never-echoed", "the provider's credential is never echoed to the sandbox",
           "userspace/terminator/gateway.cpp",
           "if (uh.result_int() == 401) {",
           "if (uh.result_int() == 401 && false) {",
           ("gtest", "tests/unit/terminator/redir_gateway_tests",
            "*/GatewayTest.ProviderRejectingTheCredentialIsReportedWithoutEchoingIt/*", ["redir_gateway_tests"])),
    Mutant("decision-cache-policy-generation", "a policy reload, attach or detach applies to the next request on a "
           "kept-alive connection (the connection's cached policy is dropped when the table's generation moves)",
           "userspace/terminator/gateway.cpp",
           "c.policy_generation != pg ||",
           "false ||",
           ("gtest", "tests/unit/terminator/redir_gateway_tests",
            "*/GatewayTest.PolicyChangeAppliesToTheNextRequestOnTheSameConnection/*", ["redir_gateway_tests"])),
    Mutant("decision-cache-store-generation", "an inference or provider change (a replaced credential) applies to "
           "the next request on a kept-alive connection (the cached snapshot is dropped when the store's moves)",
           "userspace/terminator/gateway.cpp",
           "c.store_generation != sg ||",
           "false ||",
           ("gtest", "tests/unit/terminator/redir_gateway_tests",
            "*/GatewayTest.ProviderChangeAppliesToTheNextRequestOnTheSameConnection/*", ["redir_gateway_tests"])),
    Mutant("decision-cache-fails-closed", "without a generation to tell (none, or 0) the sandbox's policy is asked "
           "per request",
           "userspace/terminator/gateway.cpp",
           "if (pg == 0 || c.policy_generation",
           "if (c.policy_generation",
           ("gtest", "tests/unit/terminator/redir_gateway_tests",
            "*/GatewayTest.WithoutAGenerationThePolicyIsAskedPerRequest/*", ["redir_gateway_tests"])),
    Mutant("head-injection", "no byte a peer sent can split a head the terminator writes (header injection, "
           "response splitting)",
           "userspace/terminator/wire.cpp",
           "if (!is_token(name) || !is_safe_value(value) || is_framing_field(name)) return false;",
           "if (!is_token(name) || is_framing_field(name)) return false;",
           ("gtest", "tests/unit/terminator/redir_terminator_tests", "Wire.CrLfAndNulNeverReachTheWire",
            ["redir_terminator_tests"])),
    Mutant("smuggling-te", "ambiguous request framing (Transfer-Encoding other than one \"chunked\") is refused",
           "userspace/terminator/request.cpp",
           "if (h.transfer_encoding_count > 1 ||\n        (h.transfer_encoding_count == 1 && !iequals(trim(h.transfer_encoding), \"chunked\"))) {",
           "if (false) {",
           ("gtest", "tests/unit/terminator/redir_gateway_tests", "*/GatewayTest.SmugglingVariantsAreRefused/*",
            ["redir_gateway_tests"])),
    Mutant("one-host", "ambiguous request framing (an HTTP/1.1 request without exactly one Host) is refused: "
           "every Host field the flat parser kept is counted",
           "userspace/terminator/head.hpp",
           "++h.host_count;",
           "h.host_count = 1;",
           ("gtest", "tests/unit/terminator/redir_gateway_tests", "*/GatewayTest.SmugglingVariantsAreRefused/*",
            ["redir_gateway_tests"])),
    Mutant("upstream-tls-verify", "the provider's certificate is verified",
           "userspace/terminator/upstream_tls.cpp",
           "SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);",
           "SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);",
           ("gtest", "tests/unit/terminator/redir_gateway_tests", "*/GatewayTest.UntrustedProviderCertificateIs502/*",
            ["redir_gateway_tests"])),
    Mutant("dns-denied-nxdomain", "a name no rule allows is NXDOMAIN and never forwarded",
           "userspace/dns/core.cpp",
           "if (!match || match->deny) {",
           "if (false) {",
           ("gtest", "tests/unit/dns/test_dns", "DnsQuery.DeniedNameIsNxdomainWithName", ["test_dns"])),
    Mutant("dns-tcp-cap", "the DNS responder caps TCP connections per sandbox",
           "userspace/dns/server.cpp",
           "if (conns.size() >= cfg.max_tcp_connections) return std::nullopt;",
           "if (false) return std::nullopt;",
           ("gtest", "tests/unit/dns/test_dns", "ResponderTest.TcpConnectionCap", ["test_dns"])),
    Mutant("policy-duplicate-key", "a policy file repeating a key is refused (no last-one-wins surprise)",
           "userspace/policy/parse.cpp",
           "if (f.by_name.count(k)) {",
           "if (false) {",
           ("gtest", "tests/unit/policy/test_policy", "PolicyParse.MalformedPoliciesReportExactMessages",
            ["test_policy"]), ci=True),
    Mutant("policy-link-local-rule", "never-reachable metadata: a rule naming only never-reachable addresses is refused",
           "userspace/policy/parse.cpp",
           "if (auto* s = redir::range_containing(*res.cidr, AddrClass::never_reachable)) {",
           "if (auto* s = false ? redir::range_containing(*res.cidr, AddrClass::never_reachable) : nullptr) {",
           ("gtest", "tests/unit/policy/test_policy", "PolicyParse.MalformedPoliciesReportExactMessages",
            ["test_policy"])),
    Mutant("dns-rebinding", "DNS rebinding: a public name answering a special address is not admitted",
           "userspace/policy/compile.cpp",
           "bool special = is_special(addr);",
           "bool special = false;",
           ("gtest", "tests/unit/policy/test_policy", "PolicyCompile.HostMatching", ["test_policy"])),
    Mutant("dns-admits-link-local", "never-reachable metadata: no DNS answer admits a metadata address",
           "userspace/policy/compile.cpp",
           "if (is_never_reachable(addr) || is_loopback(addr)) return std::nullopt;",
           "if (is_loopback(addr)) return std::nullopt;",
           ("gtest", "tests/unit/policy/test_policy", "PolicyAdmit.WideAllowedIpsNeverAdmitMetadataOrLoopback", ["test_policy"])),
    Mutant("default-deny", "default deny: a destination no rule allows gets EPERM",
           "bpf/include/redir/decide.h",
           "dv->expires_ns <= bpf_ktime_get_boot_ns())\n\t\treturn REDIR_VERDICT_DENY;",
           "dv->expires_ns <= bpf_ktime_get_boot_ns())\n\t\treturn REDIR_VERDICT_ALLOW;",
           ("gtest", "tests/kernel/datapath_test", "DatapathTest.DefaultDenyGivesEpermAndOneEvent", ["datapath_test"])),
    Mutant("link-local-never", "never-reachable metadata: link-local and metadata addresses denied whatever the policy says",
           "bpf/include/redir/decide.h",
           "if (redir_never_reachable(dst)) {",
           "if (0 && redir_never_reachable(dst)) {",
           ("gtest", "tests/kernel/datapath_test", "DatapathTest.LinkLocalDeniedEvenWhenARuleCoversIt",
            ["datapath_test"])),
    Mutant("raw-socket-refusal", "raw, ping and other non-TCP/UDP inet sockets are refused in a sandbox",
           "bpf/redir.bpf.c",
           "if (inet_socket_governed(type, protocol, true))\n\t\treturn CG_ALLOW;",
           "if (1)\n\t\treturn CG_ALLOW;",
           ("gtest", "tests/kernel/datapath_test", "DatapathTest.RawAndPingSocketsRefusedEvenForRoot",
            ["datapath_test"])),
    Mutant("dns-loopback-admission", "the node's loopback is never reachable through a DNS admission",
           "bpf/include/redir/decide.h",
           "if (redir_is_loopback(dst))\n\t\treturn REDIR_VERDICT_DENY;\n\tstruct redir_dns_allow_key",
           "if (0)\n\t\treturn REDIR_VERDICT_DENY;\n\tstruct redir_dns_allow_key",
           ("gtest", "tests/kernel/special_addresses_test", "SpecialPolicy.DnsAdmissionNeverOpensTheNodesLoopback",
            ["special_addresses_test"])),
    Mutant("agent-loopback-refused", "a sandbox sharing the agent's namespace never reaches the agent's "
           "listeners on loopback directly", "bpf/include/redir/decide.h",
           "if (own_netns && redir_is_loopback(dst)) {", "if (redir_is_loopback(dst)) {",
           escape_e2e("test_escape_addresses.EscapeAgentPorts.test_plain_http_port_directly")),
    Mutant("source-routing-refused", "IPv4 source routing (IP_OPTIONS LSRR) never sends a packet on to a hop "
           "nobody checked", "bpf/redir.bpf.c", "return optname == IP_OPTIONS;", "return false;",
           escape_e2e("test_escape_protocols.EscapeProtocols.test_loose_source_route_through_a_denied_first_hop")),
    limits_mutant("limits-admit", "over the limit, 429 before the provider", "agent",
                  "return limiter_.admit(cgroup_id, limits, wall_ms());",
                  "(void)limiter_.admit(cgroup_id, limits, wall_ms());\n    return std::nullopt;",
                  "RequestsPerMinuteE2E.test_over_the_limit_is_a_429_in_each_apis_shape_and_no_path_dodges_it"),
    limits_mutant("limits-saved-each-second", "counters survive a kill -9", "agent",
                  "            save();\n        } catch", "            (void)0;\n        } catch",
                  "RequestsPerMinuteE2E.test_counters_survive_an_agent_restart_and_a_kill"),
    limits_mutant("limits-should-retry", "the SDKs do not retry a wait they would not honour", "terminator",
                  'h.emplace_back("x-should-retry", "false");', "(void)h;",
                  "TokensPerDayE2E.test_tokens_the_provider_reports_are_counted_until_the_day_is_spent"),
    limits_mutant("limits-estimate", "an answer without usage is not free", "agent",
                  "if (!r.usage.known() && !answered) return;",
                  "if (!r.usage.known() && (answered || !answered)) return;",
                  "FakeProviderE2E.test_an_answer_without_usage_is_charged_an_estimate"),
    Mutant("body-buffer-cap", "resource caps: a sandbox's idle connections keep no large request body",
           "userspace/terminator/gateway.cpp",
           "if (body.capacity() > kKept) std::string().swap(body);",
           "/* mutant: every body kept */",
           ("gtest", "tests/unit/terminator/redir_gateway_hostile_tests",
            "*/HostileGatewayTest.IdleConnectionsDoNotKeepTheirLargeBodies/*", ["redir_gateway_hostile_tests"])),
    Mutant("audit-tail-bound", "a sandbox flooding audit records cannot grow the agent's memory (the in-memory "
           "tail's byte bound)", "userspace/agent/audit_tail.hpp",
           "while (bytes_ > max_bytes_ && count_ > 1) drop_oldest();", "(void)max_bytes_;",
           ("gtest", "tests/unit/agent/test_agent_audit_log", "AuditTail.KeepsWhatADequeWithBothBoundsKept",
            ["test_agent_audit_log"])),
    Mutant("audit-full-disk-counted", "a full audit disk blocks nothing and is counted, never thrown",
           "userspace/agent/audit_log.cpp",
           "write_errors_.fetch_add(lost, std::memory_order_relaxed);",
           "(void)lost;",
           ("gtest", "tests/unit/agent/test_agent_audit_log", "AuditLogTest.FailedWritesAreCountedAndTheTailStillGetsThem",
            ["test_agent_audit_log"])),
    Mutant("audit-flush-posted", "an audit record reaches the file by the end of the io-loop turn that wrote it "
           "(the batch's flush is posted to the writing thread)", "userspace/agent/audit_log.cpp",
           "boost::asio::defer(ex, [&log] { log.flush(); });", "(void)ex;",
           ("gtest", "tests/unit/agent/test_agent_audit_log", "AuditLogTest.IoThreadsWriteOneBatchPerLoopTurn",
            ["test_agent_audit_log"])),
    Mutant("audit-flush-per-thread", "an audit record never waits for another io thread's turn to end (each "
           "thread adding to a batch posts its own flush)", "userspace/agent/audit_log.cpp",
           "const bool post = t_flush_posted_for != batch_;", "const bool post = pending_ends_.size() == 1;",
           ("gtest", "tests/unit/agent/test_agent_audit_log", "AuditLogTest.EachWritingThreadIsAskedForItsOwnFlush",
            ["test_agent_audit_log"])),
    Mutant("audit-batch-rotation-split", "audit disk use stays bounded by (keep + 1) x max-bytes (a batch crossing "
           "the limit is split at a record)", "userspace/agent/rotating_file.cpp",
           "while (j < n && size_ + lead + (ends[j] - start) <= max_bytes_) ++j;", "j = n;",
           ("gtest", "tests/unit/agent/test_agent_audit_log", "AuditLogTest.BatchesRotateAsSpdlogsSinkDid",
            ["test_agent_audit_log"])),
    Mutant("events-follow-one-lock", "`redirctl events -f` misses no record between the tail and the live ones "
           "(both taken under the audit log's lock)", "userspace/agent/control_server.cpp",
           "take(audit.subscribe_after_tail(req.count, ",
           "take(audit.tail(req.count));\n    take(audit.subscribe_after_tail(0, ",
           ("gtest", "tests/unit/control/test_control_server",
            "ControlServerTest.EventsFollowGetsTheReplyThenEveryLaterRecordOnce", ["test_control_server"])),
    Mutant("events-follow-reply-first", "`redirctl events -f` gets its reply before any live record (the reply "
           "is queued ahead of the lines its followers posted)", "userspace/agent/control_server.cpp",
           "self->queue(std::move(resp));", "self->send(std::move(resp));",
           ("gtest", "tests/unit/control/test_control_server",
            "ControlServerTest.EventsFollowSendsTheReplyBeforeARecordWrittenMeanwhile", ["test_control_server"])),
    Mutant("draining-read-fin", "a connection's end is never lost: a FIN that came with the last bytes is "
           "still read (a read counts as draining the socket only when the kernel says nothing, not even a FIN, "
           "is left), so a sandbox or provider that closes is seen, not left to its idle deadline",
           "userspace/terminator/draining_read.hpp",
           "return left == 0 ? Recv::Drained : Recv::Got;", "return n < b.size() ? Recv::Drained : Recv::Got;",
           ("gtest", "tests/unit/terminator/redir_draining_read_tests",
            "DrainingReadTest.FinThatCameWithTheLastBytesIsReportedAsTheEnd", ["redir_draining_read_tests"])),
    Mutant("held-sends-close", "nothing is lost on a close: the last answer of a connection that ends "
           "(Connection: close, a refusal) leaves before the close when answers are held to the end of the "
           "loop turn", "userspace/terminator/tls_stream.hpp",
           "        core_->send_held();\n        boost::system::error_code ig;", "        boost::system::error_code ig;",
           ("gtest", "tests/unit/terminator/redir_tls_stream_tests", "TlsStreamTest.CloseSendsHeldRecordsFirst",
            ["redir_tls_stream_tests"])),
    Mutant("held-flush-limit", "a sandbox that stops reading cannot hold its connection past the write "
           "timeout: the part of a held answer the socket did not take, flushed in the background while the "
           "session waits for the next request, has the write timeout too (not only the idle one)",
           "userspace/terminator/tls_stream.cpp",
           "        if (held_flush_limit != Clock::duration::max()) flush_due_at(Clock::now() + held_flush_limit);\n",
           "",
           ("gtest", "tests/unit/terminator/redir_gateway_tests",
            "OwnThreads/TlsGatewayTest.SandboxThatStopsReadingItsLastAnswerIsCutAtTheWriteTimeout/*",
            ["redir_gateway_tests"])),
    Mutant("poll-yields-the-cpu", "a sandbox pacing its requests to keep a terminator io thread polling cannot "
           "take a CPU another thread wants: polling stops when its yield let another thread run",
           "userspace/terminator/poll_loop.cpp",
           "            const bool other_ran = after - now > kYieldedTo;", "            const bool other_ran = false;",
           ("gtest", "tests/unit/terminator/redir_poll_loop_tests",
            "RunPollingTest.PollingStopsWhenAnotherThreadWantsTheCpu", ["redir_poll_loop_tests"])),
    Mutant("poll-not-while-others-run", "a loaded gateway's io threads do not poll: while one runs handlers the "
           "others sleep, so the scheduler still sees their CPUs idle for the threads it wakes",
           "userspace/terminator/poll_loop.cpp",
           "            if (s.busy.load(std::memory_order_relaxed) > 0) {", "            if (false) {",
           ("gtest", "tests/unit/terminator/redir_poll_loop_tests",
            "RunPollingTest.NoPollingWhileAnotherThreadOfTheGroupRuns", ["redir_poll_loop_tests"])),
    Mutant("poll-not-when-loaded", "an io thread with many calls in flight does not poll (its CPU must look idle "
           "to the scheduler on a busy machine)",
           "userspace/terminator/poll_loop.cpp",
           "        if (until > idle_from && light && !light()) loaded = true;", "",
           ("gtest", "tests/unit/terminator/redir_poll_loop_tests",
            "RunPollingTest.NoPollingWhileTheThreadSaysItIsLoaded", ["redir_poll_loop_tests"])),
    Mutant("poll-window-shrinks", "an idle terminator io thread does not keep polling: a sleep longer than the "
           "largest window shrinks the window",
           "userspace/terminator/poll_loop.hpp",
           "            // Polling was wasted, and would be with any window.\n            shrink();",
           "            // Polling was wasted, and would be with any window.",
           ("gtest", "tests/unit/terminator/redir_poll_loop_tests", "PollWindowTest.*", ["redir_poll_loop_tests"])),
    Mutant("dns-lookup-holds-itself", "lifetime safety: a DNS lookup in flight outlives its callbacks",
           "userspace/dns/server.cpp",
           "usock.async_receive(asio::buffer(buf), [self = shared_from_this()](error_code ec, size_t n) {",
           "usock.async_receive(asio::buffer(buf), [self = this](error_code ec, size_t n) {",
           ("sanitized-e2e", "test_detach_in_flight", "DetachInFlight", "test_detach_with_streams_relay_and_dns_in_flight",
            [])),
]
