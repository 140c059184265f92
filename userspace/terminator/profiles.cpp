#include "terminator/profiles.hpp"

#include <algorithm>
#include <array>

namespace redir::terminator {

namespace {

const std::vector<Endpoint> kOpenAiAll = {Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings,
                                          Endpoint::Responses, Endpoint::Models, Endpoint::ModelById};

const std::array<Profile, 5>& profiles() {
    static const std::array<Profile, 5> table = {{
        {
            .type = "openai",
            .default_base_url = "https://api.openai.com/v1",
            .base_includes_version = true,
            .auth = AuthStyle::Bearer,
            .auth_header = "authorization",
            .credential_keys = {"OPENAI_API_KEY", "API_KEY"},
            .credential_required = true,
            .default_headers = {},
            // openai-organization / openai-project come from the provider's
            // configuration only (provider_fetch.hpp add_account_headers).
            .extra_headers = {"openai-beta"},
            .query_params = {},
            .endpoints = kOpenAiAll,
        },
        {
            .type = "anthropic",
            .default_base_url = "https://api.anthropic.com",
            .base_includes_version = false,
            .auth = AuthStyle::Header,
            .auth_header = "x-api-key",
            .credential_keys = {"ANTHROPIC_API_KEY", "API_KEY"},
            .credential_required = true,
            .default_headers = {{"anthropic-version", "2023-06-01"}},
            .extra_headers = {"anthropic-version", "anthropic-beta"},
            // The Anthropic SDKs add ?beta=true on beta endpoints.
            .query_params = {"beta"},
            .endpoints = {Endpoint::Messages, Endpoint::Models, Endpoint::ModelById},
        },
        {
            .type = "nvidia",
            .default_base_url = "https://integrate.api.nvidia.com/v1",
            .base_includes_version = true,
            .auth = AuthStyle::Bearer,
            .auth_header = "authorization",
            .credential_keys = {"NVIDIA_API_KEY", "API_KEY"},
            .credential_required = true,
            .default_headers = {},
            .extra_headers = {},
            .query_params = {},
            .endpoints = {Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Models,
                          Endpoint::ModelById},
        },
        {
            .type = "openai-compatible",
            .default_base_url = "",
            .base_includes_version = true,
            .auth = AuthStyle::Bearer,
            .auth_header = "authorization",
            .credential_keys = {"OPENAI_API_KEY", "API_KEY"},
            // Self-hosted servers (vLLM, llama.cpp) often take no key.
            .credential_required = false,
            .default_headers = {},
            // openai-organization / openai-project come from the provider's
            // configuration only (provider_fetch.hpp add_account_headers).
            .extra_headers = {"openai-beta"},
            .query_params = {},
            .endpoints = kOpenAiAll,
        },
        {
            .type = "mock",
            .default_base_url = "",
            .base_includes_version = true,
            .auth = AuthStyle::None,
            .auth_header = "",
            .credential_keys = {},
            .credential_required = false,
            .default_headers = {},
            .extra_headers = {"anthropic-version", "anthropic-beta"},
            .query_params = {},
            .endpoints = {Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses,
                          Endpoint::Messages, Endpoint::Models, Endpoint::ModelById},
            .local = true,
        },
    }};
    return table;
}

}  // namespace

std::string_view endpoint_description(Endpoint e) {
    switch (e) {
        case Endpoint::ChatCompletions: return "the OpenAI Chat Completions API";
        case Endpoint::Completions: return "the OpenAI Completions API";
        case Endpoint::Embeddings: return "the OpenAI Embeddings API";
        case Endpoint::Responses: return "the OpenAI Responses API";
        case Endpoint::Messages: return "the Anthropic Messages API";
        case Endpoint::Models: return "the models list";
        case Endpoint::ModelById: return "the model lookup";
    }
    return "an unknown API";
}

std::string_view endpoint_path(Endpoint e) {
    switch (e) {
        case Endpoint::ChatCompletions: return "/v1/chat/completions";
        case Endpoint::Completions: return "/v1/completions";
        case Endpoint::Embeddings: return "/v1/embeddings";
        case Endpoint::Responses: return "/v1/responses";
        case Endpoint::Messages: return "/v1/messages";
        case Endpoint::Models: return "/v1/models";
        case Endpoint::ModelById: return "/v1/models/{id}";
    }
    return "";
}

bool Profile::serves(Endpoint e) const { return std::find(endpoints.begin(), endpoints.end(), e) != endpoints.end(); }

const Profile* find_profile(std::string_view type) {
    for (const auto& p : profiles())
        if (p.type == type) return &p;
    return nullptr;
}

std::string profile_type_list() {
    std::string out;
    for (const auto& p : profiles()) {
        if (!out.empty()) out += ", ";
        out += p.type;
    }
    return out;
}

const std::vector<std::string_view>& common_allowed_headers() {
    static const std::vector<std::string_view> h = {"content-type", "accept", "user-agent"};
    return h;
}

bool is_credential_header(std::string_view n) {
    static constexpr std::array<std::string_view, 10> names = {
        "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie",
        "x-goog-api-key", "openai-api-key", "x-auth-token", "ocp-apim-subscription-key", "set-cookie"};
    return std::find(names.begin(), names.end(), n) != names.end();
}

}  // namespace redir::terminator
