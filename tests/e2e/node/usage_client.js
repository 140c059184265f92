// Official OpenAI SDK against https://inference.local, as usage accounting
// sees it: plain, streamed (the terminator asks for the usage chunk, which has
// empty choices), and the SDK's stream helper that assembles the completion.
const OpenAI = require("openai");
const mode = process.argv[2] || "plain";
const messages = [{ role: "user", content: "hi" }];
(async () => {
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
