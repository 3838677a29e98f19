//! Reading token usage out of model responses as they stream past, for each API's own usage
//! fields: Anthropic `usage` (in `message_start` and the cumulative `message_delta`), OpenAI
//! Responses `response.usage` and Chat Completions `usage` (the last chunk), Gemini
//! `usageMetadata` (cumulative per chunk). Fields are taken as last seen, which is right for every
//! one of them since none reports increments. Input tokens are normalised to the uncached part
//! (OpenAI and Gemini count cached tokens inside their input figure; Anthropic does not).

use super::config::Price;
use serde_json::Value;

/// Longest SSE line or JSON body read for usage; a longer one is passed through unmetered.
const MAX_METERED: usize = 8 << 20;

/// Tokens of one model call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }

    /// The cost under `price`, in USD.
    pub fn cost(&self, price: &Price) -> f64 {
        (self.input as f64 * price.input_per_mtok
            + self.output as f64 * price.output_per_mtok
            + self.cache_read as f64 * price.cache_read_per_mtok
            + self.cache_write as f64 * price.cache_write_per_mtok)
            / 1e6
    }
}

/// Usage and model read from one response body, fed in chunks as they pass.
#[derive(Debug, Default)]
pub struct Meter {
    sse: bool,
    buf: Vec<u8>,
    overflow: bool,
    /// Input as the API reports it (cached included for OpenAI and Gemini) until [`Meter::finish`].
    raw_input: u64,
    cached_inside_input: bool,
    tokens: Tokens,
    pub model: String,
}

impl Meter {
    pub fn new(sse: bool) -> Self {
        Self {
            sse,
            ..Self::default()
        }
    }

    /// One chunk of the body as it passes.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.buf.len() + chunk.len() > MAX_METERED {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            if self.overflow {
                // Skip the rest of an over-long line.
                self.overflow = !piece.ends_with(b"\n");
                continue;
            }
            if self.buf.len() + piece.len() > MAX_METERED {
                self.buf.clear();
                self.overflow = !piece.ends_with(b"\n");
                continue;
            }
            self.buf.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.absorb(&v);
        }
    }

    /// The usage once the body has ended.
    pub fn finish(&mut self) -> Tokens {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.sse_line(&rest);
        } else if !self.overflow
            && let Ok(v) = serde_json::from_slice::<Value>(&std::mem::take(&mut self.buf))
        {
            // A Gemini non-streaming answer may also be a JSON array of chunks.
            match &v {
                Value::Array(items) => items.iter().for_each(|i| self.absorb(i)),
                _ => self.absorb(&v),
            }
        }
        let mut t = self.tokens;
        t.input = if self.cached_inside_input {
            self.raw_input.saturating_sub(t.cache_read)
        } else {
            self.raw_input
        };
        t
    }

    fn absorb(&mut self, v: &Value) {
        for obj in [Some(v), v.get("message"), v.get("response")]
            .into_iter()
            .flatten()
        {
            if self.model.is_empty()
                && let Some(m) = obj
                    .get("model")
                    .or_else(|| obj.get("modelVersion"))
                    .and_then(Value::as_str)
            {
                self.model = m.chars().take(200).collect();
            }
            if let Some(u) = obj.get("usage").filter(|u| u.is_object()) {
                self.usage(u);
            }
            if let Some(u) = obj.get("usageMetadata").filter(|u| u.is_object()) {
                self.gemini(u);
            }
        }
    }

    fn usage(&mut self, u: &Value) {
        let num = |v: Option<&Value>| v.and_then(Value::as_u64);
        if let Some(n) = num(u.get("input_tokens")) {
            self.raw_input = n;
            self.cached_inside_input = u.get("input_tokens_details").is_some();
        }
        if let Some(n) = num(u.get("prompt_tokens")) {
            self.raw_input = n;
            self.cached_inside_input = true;
        }
        if let Some(n) = num(u.get("output_tokens")).or(num(u.get("completion_tokens"))) {
            self.tokens.output = n;
        }
        if let Some(n) = num(u.get("cache_read_input_tokens"))
            .or(num(u.pointer("/input_tokens_details/cached_tokens")))
            .or(num(u.pointer("/prompt_tokens_details/cached_tokens")))
        {
            self.tokens.cache_read = n;
        }
        if let Some(n) = num(u.get("cache_creation_input_tokens")) {
            self.tokens.cache_write = n;
        }
    }

    fn gemini(&mut self, u: &Value) {
        let num = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(n) = num("promptTokenCount") {
            self.raw_input = n;
            self.cached_inside_input = true;
        }
        let out = num("candidatesTokenCount").unwrap_or(0) + num("thoughtsTokenCount").unwrap_or(0);
        if out > 0 {
            self.tokens.output = out;
        }
        if let Some(n) = num("cachedContentTokenCount") {
            self.tokens.cache_read = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(body: &str, split: usize) -> (Tokens, String) {
        let mut m = Meter::new(true);
        for c in body.as_bytes().chunks(split) {
            m.feed(c);
        }
        let t = m.finish();
        (t, m.model.clone())
    }

    #[test]
    fn anthropic_stream_in_any_chunking() {
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\n";
        for split in [1, 3, 17, 4096] {
            let (t, model) = sse(body, split);
            assert_eq!(model, "claude-x");
            assert_eq!(
                t,
                Tokens {
                    input: 100,
                    output: 20,
                    cache_read: 7,
                    cache_write: 3
                }
            );
        }
    }

    #[test]
    fn openai_responses_chat_and_gemini() {
        let (t, m) = sse(
            "data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt\",\"usage\":{\"input_tokens\":100,\"input_tokens_details\":{\"cached_tokens\":40},\"output_tokens\":20}}}\n\n",
            5,
        );
        assert_eq!(
            (t.input, t.cache_read, t.output, m.as_str()),
            (60, 40, 20, "gpt")
        );
        let (t, _) = sse(
            "data: {\"model\":\"m\",\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            9,
        );
        assert_eq!((t.input, t.output), (10, 2));
        let mut g = Meter::new(false);
        g.feed(br#"{"modelVersion":"gem","usageMetadata":{"promptTokenCount":50,"candidatesTokenCount":5,"thoughtsTokenCount":2,"cachedContentTokenCount":10}}"#);
        let t = g.finish();
        assert_eq!((t.input, t.output, t.cache_read), (40, 7, 10));
        assert_eq!(g.model, "gem");
    }

    #[test]
    fn garbage_meters_nothing_and_cost_is_per_million() {
        let mut m = Meter::new(false);
        m.feed(b"\x00\xffnot json");
        assert_eq!(m.finish(), Tokens::default());
        let t = Tokens {
            input: 1_000_000,
            output: 2_000_000,
            cache_read: 0,
            cache_write: 0,
        };
        let p = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            ..Price::default()
        };
        assert!((t.cost(&p) - 33.0).abs() < 1e-9);
    }
}
