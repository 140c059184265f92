// Official OpenAI SDK against https://inference.local (OPENAI_BASE_URL and the
// CA come from the environment, exactly as `redirctl run` sets them).
const OpenAI = require("openai");
const mode = process.argv[2] || "plain";
(async () => {
  const client = new OpenAI({ apiKey: "sk-client-should-be-dropped", baseURL: process.env.OPENAI_BASE_URL });
  if (mode === "stream") {
    const stream = await client.chat.completions.create({
      model: "client-model", stream: true, messages: [{ role: "user", content: "hi" }],
    });
    const events = [];
    for await (const chunk of stream) {
      events.push({ at: Date.now() / 1000, sent_at: chunk.sent_at, text: chunk.choices[0]?.delta?.content ?? "" });
    }
    console.log(JSON.stringify({ events }));
  } else {
    const r = await client.chat.completions.create({ model: "client-model", messages: [{ role: "user", content: "hi" }] });
    console.log(JSON.stringify({ content: r.choices[0].message.content, model: r.model, usage: r.usage }));
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
