// Official OpenAI and Anthropic SDKs against https://inference.local, as usage
// accounting sees them. OpenAI: plain, streamed (the terminator asks for the
// usage chunk, which has empty choices), and the SDK's stream helper that
// assembles the completion. Anthropic: plain, streamed (usage in message_start
// and message_delta), and the messages.stream() helper's final message.
const OpenAI = require("openai");
const Anthropic = require("@anthropic-ai/sdk");
const mode = process.argv[2] || "plain";
const messages = [{ role: "user", content: "hi" }];
async function anthropic(mode) {
  const client = new Anthropic({ apiKey: "sk-ant-client-should-be-dropped", baseURL: process.env.ANTHROPIC_BASE_URL });
  const req = { model: "client-model", max_tokens: 64, messages };
  if (mode === "anthropic-plain") {
    const r = await client.messages.create(req);
    return { text: r.content[0].text, usage: r.usage };
  }
  if (mode === "anthropic-stream") {
    const stream = await client.messages.create({ ...req, stream: true });
    let text = "";
    const usage = {};
    for await (const ev of stream) {
      if (ev.type === "content_block_delta") text += ev.delta.text;
      if (ev.type === "message_start") usage.input_tokens = ev.message.usage.input_tokens;
      if (ev.type === "message_delta") usage.output_tokens = ev.usage.output_tokens;
    }
    return { text, usage };
  }
  const final = await client.messages.stream(req).finalMessage();  // "anthropic-helper"
  return { text: final.content[0].text, usage: final.usage };
}

(async () => {
  if (mode.startsWith("anthropic-")) {
    console.log(JSON.stringify(await anthropic(mode)));
    return;
  }
  const client = new OpenAI({ apiKey: "sk-client-should-be-dropped", baseURL: process.env.OPENAI_BASE_URL });
  if (mode === "plain") {
    const r = await client.chat.completions.create({ model: "client-model", messages });
    console.log(JSON.stringify({ text: r.choices[0].message.content, usage: r.usage }));
  } else if (mode === "stream") {
    const stream = await client.chat.completions.create({ model: "client-model", stream: true, messages });
    let text = "";
    let chunks = 0;
    let empty_choices = 0;
    let usage = null;
    for await (const chunk of stream) {
      chunks++;
      if (chunk.choices.length === 0) empty_choices++;
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    console.log(JSON.stringify({ text, chunks, empty_choices, usage }));
  } else if (mode === "helper") {
    const runner = client.beta.chat.completions.stream({ model: "client-model", messages });
    let text = "";
    runner.on("content", (delta) => { text += delta; });
    const final = await runner.finalChatCompletion();
    console.log(JSON.stringify({ text, final_text: final.choices[0].message.content, usage: final.usage ?? null }));
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
