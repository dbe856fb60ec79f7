using CommandLine;

namespace NativeLora.Cli;

/// <summary>Options every verb that computes shares.</summary>
public abstract class DeviceOptions
{
    [Option("device", Default = "auto", HelpText = "Compute device: auto, cpu or cuda.")]
    public string Device { get; set; } = "auto";
}

[Verb("info", HelpText = "Print the native backend and the picked compute device.")]
public sealed class InfoOptions : DeviceOptions
{
}

[Verb("selfcheck", HelpText = "Check GEMMs in f32/bf16/f16 (and with --kernels every ILGPU kernel family) against float64 references on the picked device.")]
public sealed class SelfCheckOptions : DeviceOptions
{
    [Option("size", Default = 256, HelpText = "Matrix size of the GEMM check.")]
    public int Size { get; set; } = 256;

    [Option("kernels", HelpText = "Also run every kernel family forward and backward (embedding, rmsnorm, rope, attention incl. decode, swiglu, elementwise/casts, cross-entropy, lora, dora, nf4, adamw incl. 8-bit).")]
    public bool Kernels { get; set; }

    [Option("families", HelpText = "With --kernels: only these families, comma-separated.")]
    public string? Families { get; set; }

    [Option("seed", HelpText = "Seed of the random inputs (default: a fresh one, printed).")]
    public int? Seed { get; set; }
}

[Verb("init-model", HelpText = "Write a randomly initialised model in the HF layout (config.json + model.safetensors).")]
public sealed class InitModelOptions
{
    [Option("config", Required = true, HelpText = "HF-style config JSON (model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ...).")]
    public string Config { get; set; } = "";

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";

    [Option("seed", Default = 0, HelpText = "Random seed.")]
    public int Seed { get; set; }

    [Option("dtype", Default = "f32", HelpText = "Weight dtype on disk: f32, bf16 or f16.")]
    public string DType { get; set; } = "f32";

    [Option("tokenizer", HelpText = "Tokenizer directory to copy in (tokenizer.json, tokenizer_config.json); vocab_size is set from it.")]
    public string? Tokenizer { get; set; }
}

[Verb("import", HelpText = "Import a checkpoint of another format into the HF layout.")]
public sealed class ImportOptions
{
    [Option("from", Required = true, HelpText = "Source format: llama2c.")]
    public string From { get; set; } = "";

    [Value(0, MetaName = "FILE", Required = true, HelpText = "Checkpoint to import.")]
    public string File { get; set; } = "";

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";
}

[Verb("generate", HelpText = "Generate text (or token ids) with a model and an optional adapter.")]
public sealed class GenerateOptions : DeviceOptions
{
    [Option("model", HelpText = "HF model directory or Hub id org/name[@revision] (default: the adapter's base_model_name_or_path).")]
    public string? Model { get; set; }

    [Option("adapter", HelpText = "PEFT adapter directory or Hub id to apply.")]
    public string? Adapter { get; set; }

    [Option("prompt", HelpText = "Prompt text (needs tokenizer files in the model directory).")]
    public string? Prompt { get; set; }

    [Option("prompt-ids", Separator = ',', HelpText = "Prompt as comma-separated token ids (models without a tokenizer).")]
    public IEnumerable<int>? PromptIds { get; set; }

    [Option("chat", HelpText = "Wrap the prompt as a user message in the model's chat template.")]
    public bool Chat { get; set; }

    [Option("system", HelpText = "System message for --chat.")]
    public string? System { get; set; }

    [Option("print-ids", HelpText = "Print the generated token ids (comma-separated, one line) instead of text.")]
    public bool PrintIds { get; set; }

    [Option("max-new-tokens", Default = 128, HelpText = "Tokens to generate at most.")]
    public int MaxNewTokens { get; set; } = 128;

    [Option("temperature", Default = 0.0f, HelpText = "0 = greedy.")]
    public float Temperature { get; set; }

    [Option("top-k", Default = 0, HelpText = "Keep the k most likely tokens (0 = off).")]
    public int TopK { get; set; }

    [Option("top-p", Default = 1.0f, HelpText = "Nucleus sampling threshold (1 = off).")]
    public float TopP { get; set; } = 1f;

    [Option("repetition-penalty", Default = 1.0f, HelpText = "CTRL-style repetition penalty (1 = off).")]
    public float RepetitionPenalty { get; set; } = 1f;

    [Option("seed", Default = 0, HelpText = "Sampling seed.")]
    public int Seed { get; set; }

    [Option("stop", Separator = '|', HelpText = "Stop strings, separated by |.")]
    public IEnumerable<string>? Stop { get; set; }

    [Option("dtype", Default = "auto", HelpText = "Compute dtype: auto (bf16 on GPU, f32 on CPU), f32, bf16, f16.")]
    public string DType { get; set; } = "auto";
}

[Verb("merge", HelpText = "Merge LoRA adapters into the base weights and write an HF model directory.")]
public sealed class MergeOptions : DeviceOptions
{
    [Option("model", HelpText = "HF model directory or Hub id org/name[@revision] (default: the adapter's base_model_name_or_path).")]
    public string? Model { get; set; }

    [Option("adapter", Required = true, HelpText = "PEFT adapter directory or Hub id (repeat for a weighted combination).")]
    public IEnumerable<string> Adapters { get; set; } = Array.Empty<string>();

    [Option("weights", Separator = ',', HelpText = "Combination weights, one per adapter (PEFT 'linear').")]
    public IEnumerable<double>? Weights { get; set; }

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";

    [Option("dtype", Default = "bf16", HelpText = "Output dtype: bf16, f16 or f32.")]
    public string DType { get; set; } = "bf16";

    [Option("max-shard-size", Default = 5L << 30, HelpText = "Shard the safetensors above this many bytes.")]
    public long MaxShardSize { get; set; } = 5L << 30;
}

[Verb("plan", HelpText = "Predict peak training memory from a model config or preset.")]
public sealed class PlanOptions
{
    [Option("model", Required = true, HelpText = "Model directory, Hub id org/name[@revision], or preset: llama3-8b, llama3-70b, mistral-7b.")]
    public string Model { get; set; } = "";

    [Option("method", Default = "lora", HelpText = "full, lora or qlora.")]
    public string Method { get; set; } = "lora";

    [Option("seq", Default = 2048, HelpText = "Sequence length.")]
    public int Seq { get; set; } = 2048;

    [Option("micro-batch", Default = 4, HelpText = "Micro-batch size.")]
    public int MicroBatch { get; set; } = 4;

    [Option("rank", Default = 16, HelpText = "LoRA rank (all seven projections).")]
    public int R { get; set; } = 16;

    [Option("dtype", Default = "bf16", HelpText = "Compute dtype.")]
    public string DType { get; set; } = "bf16";

    [Option("no-checkpointing", HelpText = "Plan without gradient checkpointing.")]
    public bool NoCheckpointing { get; set; }

    [Option("embed-tokens-on-host", HelpText = "embed_tokens in host memory (true, false; unset: true for qlora unless tied), as the train key embed_tokens_on_host.")]
    public bool? EmbedTokensOnHost { get; set; }
}

[Verb("eval", HelpText = "Evaluate a model (and adapter) on perplexity, BLEU/ROUGE and multiple-choice tasks.")]
public sealed class EvalOptions : DeviceOptions
{
    [Option("model", HelpText = "HF model directory or Hub id org/name[@revision] (default: the adapter's base_model_name_or_path).")]
    public string? Model { get; set; }

    [Option("adapter", HelpText = "PEFT adapter directory or Hub id.")]
    public string? Adapter { get; set; }

    [Option("tasks", Separator = ',', HelpText = "kind:file list: ppl, bleu, rouge, arc, hellaswag, mmlu (mmlu:test.jsonl@dev.jsonl), truthfulqa.")]
    public IEnumerable<string> Tasks { get; set; } = Array.Empty<string>();

    [Option("baseline", HelpText = "Also evaluate the base model and report the change.")]
    public bool Baseline { get; set; }

    [Option("out", HelpText = "Report JSON path (a .md table and a .png plot are written beside it).")]
    public string? Out { get; set; }

    [Option("run", HelpText = "A training output directory: report overfitting from its metrics.jsonl.")]
    public string? Run { get; set; }

    [Option("max-new-tokens", Default = 128, HelpText = "Generation length for BLEU/ROUGE.")]
    public int MaxNewTokens { get; set; } = 128;

    [Option("max-seq-len", Default = 2048, HelpText = "Perplexity window.")]
    public int MaxSeqLen { get; set; } = 2048;

    [Option("judge-url", HelpText = "OpenAI-compatible endpoint for the judge task (LLM-as-judge).")]
    public string? JudgeUrl { get; set; }

    [Option("judge-model", HelpText = "Model name to send to the judge endpoint.")]
    public string? JudgeModel { get; set; }

    [Option("judge-key-env", Default = "OPENAI_API_KEY", HelpText = "Environment variable holding the judge's API key (never logged).")]
    public string JudgeKeyEnv { get; set; } = "OPENAI_API_KEY";

    [Option("judge-cache", Default = "runs/judge-cache", HelpText = "Directory of cached judge scores.")]
    public string JudgeCache { get; set; } = "runs/judge-cache";

    [Option("degradation-threshold", Default = 0.02, HelpText = "Warn when a benchmark's accuracy drops by more than this.")]
    public double DegradationThreshold { get; set; } = 0.02;

    [Option("dtype", Default = "auto", HelpText = "Compute dtype.")]
    public string DType { get; set; } = "auto";
}

[Verb("export-gguf", HelpText = "Write a GGUF file (llama.cpp, Ollama) from an HF model directory and an optional adapter.")]
public sealed class ExportGgufOptions : DeviceOptions
{
    [Option("model", HelpText = "HF model directory or Hub id org/name[@revision] (default: the adapter's base_model_name_or_path).")]
    public string? Model { get; set; }

    [Option("adapter", HelpText = "PEFT adapter (directory or Hub id) to merge in first.")]
    public string? Adapter { get; set; }

    [Option("out", Required = true, HelpText = "Output .gguf path.")]
    public string Out { get; set; } = "";

    [Option("type", Default = "f16", HelpText = "f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k.")]
    public string Type { get; set; } = "f16";

    [Option("adapter-only", HelpText = "Write only the adapter as a GGUF LoRA (llama.cpp --lora, Ollama ADAPTER).")]
    public bool AdapterOnly { get; set; }
}

[Verb("inspect", HelpText = "Print the header, metadata and tensor table of a safetensors or GGUF file.")]
public sealed class InspectOptions
{
    [Value(0, MetaName = "FILE", Required = true, HelpText = "A .safetensors or .gguf file.")]
    public string File { get; set; } = "";

    [Option("max-tensors", Default = 50, HelpText = "Tensors to list at most.")]
    public int MaxTensors { get; set; } = 50;
}

[Verb("serve", HelpText = "Serve a model (and LoRA adapters) over an OpenAI-compatible HTTP API with continuous batching.")]
public sealed class ServeOptions : DeviceOptions
{
    [Option("model", Required = true, HelpText = "HF model directory or Hub id org/name[@revision] (with tokenizer files).")]
    public string Model { get; set; } = "";

    [Option("served-model-name", HelpText = "Name of the base model in requests (default: the model directory's name).")]
    public string? ServedModelName { get; set; }

    [Option("adapter", HelpText = "Adapters to serve from the start, as name=DIR or name=org/repo (repeatable: --adapter a=DIR1 --adapter b=DIR2).")]
    public IEnumerable<string>? Adapters { get; set; }

    [Option("adapter-dir", HelpText = "Directory that POST /v1/load_lora_adapter may load adapters from (off without it).")]
    public string? AdapterDir { get; set; }

    [Option("host", Default = "127.0.0.1", HelpText = "Address to bind (loopback by default; 0.0.0.0 for every interface).")]
    public string Host { get; set; } = "127.0.0.1";

    [Option("port", Default = 8000, HelpText = "Port (0 picks a free one).")]
    public int Port { get; set; } = 8000;

    [Option("api-key-env", HelpText = "Environment variable holding the API key; with it every endpoint but /health needs `Authorization: Bearer KEY`.")]
    public string? ApiKeyEnv { get; set; }

    [Option("dtype", Default = "auto", HelpText = "Compute dtype: auto (bf16 on CUDA, f32 on CPU), f32, bf16, f16.")]
    public string DType { get; set; } = "auto";

    [Option("max-batch", Default = 16, HelpText = "Sequences decoded together (1 = continuous batching off).")]
    public int MaxBatch { get; set; } = 16;

    [Option("max-queue", Default = 64, HelpText = "Requests that may wait for the batch; more get 429 with Retry-After.")]
    public int MaxQueue { get; set; } = 64;

    [Option("kv-cache-mb", Default = 256, HelpText = "KV-cache memory budget in MiB (paged).")]
    public int KvCacheMb { get; set; } = 256;

    [Option("kv-page-size", Default = 16, HelpText = "Positions per KV-cache page.")]
    public int KvPageSize { get; set; } = 16;

    [Option("max-loras", Default = 4, HelpText = "Adapters loaded at once.")]
    public int MaxLoras { get; set; } = 4;

    [Option("max-lora-rank", Default = 64, HelpText = "Largest adapter rank that can be loaded.")]
    public int MaxLoraRank { get; set; } = 64;

    [Option("max-body-bytes", Default = 1048576, HelpText = "Largest request body (413 beyond).")]
    public long MaxBodyBytes { get; set; } = 1 << 20;

    [Option("max-prompt-tokens", Default = 4096, HelpText = "Longest prompt (400 beyond).")]
    public int MaxPromptTokens { get; set; } = 4096;

    [Option("default-max-tokens", Default = 256, HelpText = "max_tokens of a request that gives none.")]
    public int DefaultMaxTokens { get; set; } = 256;

    [Option("log-prompts", HelpText = "Put prompt and output text in the request logs and the judge log (off by default).")]
    public bool LogPrompts { get; set; }

    [Option("request-timeout", Default = 0.0, HelpText = "Seconds a generation may run before it is stopped and answered 504 (0 = no limit).")]
    public double RequestTimeout { get; set; }

    [Option("judge-sample-rate", Default = 0.0, HelpText = "Fraction of finished requests scored by an LLM judge off the request path (0 = off); needs --judge-url and --judge-model.")]
    public double JudgeSampleRate { get; set; }

    [Option("judge-url", HelpText = "OpenAI-compatible chat endpoint of the judge (base URL, with or without /v1).")]
    public string? JudgeUrl { get; set; }

    [Option("judge-model", HelpText = "Model name sent to the judge.")]
    public string? JudgeModel { get; set; }

    [Option("judge-key-env", HelpText = "Environment variable holding the judge's API key (never printed).")]
    public string? JudgeKeyEnv { get; set; }

    [Option("judge-seed", Default = 0L, HelpText = "Seed of the sampling: the same seed picks the same requests in the order they finish.")]
    public long JudgeSeed { get; set; }

    [Option("judge-log", Default = "judge-scores.jsonl", HelpText = "JSONL the judge's scores are appended to (request id, model, scores; texts only with --log-prompts).")]
    public string JudgeLog { get; set; } = "judge-scores.jsonl";

    [Option("judge-queue", Default = 64, HelpText = "Picked requests that may wait for the judge; beyond it they are dropped and counted.")]
    public int JudgeQueue { get; set; } = 64;

    [Option("judge-concurrency", Default = 2, HelpText = "Judge calls in flight at once.")]
    public int JudgeConcurrency { get; set; } = 2;

    [Option("drift-profile", HelpText = "Profile from `nativelora drift-profile`: each prompt's embedding is scored against it (nativelora_prompt_drift_distance, nativelora_prompt_out_of_distribution_total).")]
    public string? DriftProfile { get; set; }

    [Option("no-prefix-caching", HelpText = "Do not reuse the KV pages of earlier prompts' shared beginnings (prefix caching is on by default).")]
    public bool NoPrefixCaching { get; set; }
}

[Verb("drift-profile", HelpText = "Fit the reference distribution of prompt embeddings of a data file, for `serve --drift-profile`.")]
public sealed class DriftProfileOptions : DeviceOptions
{
    [Option("model", Required = true, HelpText = "HF model directory (the one that will be served).")]
    public string Model { get; set; } = "";

    [Option("data", Required = true, HelpText = "Training data (JSON/JSONL: messages, conversations or instruction/output rows).")]
    public string Data { get; set; } = "";

    [Option("out", Required = true, HelpText = "Profile file to write (safetensors).")]
    public string Out { get; set; } = "";

    [Option("rank", Default = 32, HelpText = "Principal directions kept (the rest of the covariance is one isotropic variance).")]
    public int Rank { get; set; } = 32;

    [Option("quantile", Default = 0.99, HelpText = "Out-of-distribution threshold: this quantile of the training rows' own distances.")]
    public double Quantile { get; set; } = 0.99;

    [Option("max-rows", Default = 5000, HelpText = "Rows embedded at most (the first ones).")]
    public int MaxRows { get; set; } = 5000;

    [Option("max-seq-len", Default = 2048, HelpText = "Longest prompt embedded; longer ones keep their end.")]
    public int MaxSeqLen { get; set; } = 2048;

    [Option("dtype", Default = "auto", HelpText = "Compute dtype: auto, f32, bf16, f16 (use the serving one).")]
    public string DType { get; set; } = "auto";
}

[Verb("quantize", HelpText = "Post-training quantization into a GPTQ or AWQ checkpoint (the formats vLLM and transformers load), calibrated on data, layer by layer on the device.")]
public sealed class QuantizeOptions : DeviceOptions
{
    [Option("model", Required = true, HelpText = "HF model directory (e.g. the output of merge).")]
    public string Model { get; set; } = "";

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";

    [Option("method", Required = true, HelpText = "gptq or awq (rtn: round-to-nearest in the GPTQ format, a baseline).")]
    public string Method { get; set; } = "";

    [Option("data", HelpText = "Calibration data: JSON/JSONL files in the training formats or plain {\"text\": ...} (repeatable).")]
    public IEnumerable<string> Data { get; set; } = Array.Empty<string>();

    [Option("calibration-ids", HelpText = "Instead of --data: a file with one sequence of token ids per line (models without a tokenizer).")]
    public string? CalibrationIds { get; set; }

    [Option("samples", Default = 128, HelpText = "Calibration samples drawn from the data.")]
    public int Samples { get; set; } = 128;

    [Option("max-tokens", Default = 2048, HelpText = "Tokens per calibration sample at most.")]
    public int MaxTokens { get; set; } = 2048;

    [Option("seed", Default = 42, HelpText = "Seed of the calibration draw.")]
    public int Seed { get; set; } = 42;

    [Option("bits", Default = 4, HelpText = "GPTQ: 4 or 8 (AWQ: 4).")]
    public int Bits { get; set; } = 4;

    [Option("group-size", Default = 128, HelpText = "Input channels per quantization group; GPTQ: -1 for per-channel.")]
    public int GroupSize { get; set; } = 128;

    [Option("desc-act", HelpText = "GPTQ: act-order (columns by decreasing Hessian diagonal; g_idx records each column's group).")]
    public bool DescAct { get; set; }

    [Option("asym", HelpText = "GPTQ: asymmetric (zero-point) quantization instead of the symmetric default.")]
    public bool Asym { get; set; }

    [Option("damp-percent", Default = 0.01, HelpText = "GPTQ: dampening, a fraction of the mean Hessian diagonal.")]
    public double DampPercent { get; set; } = 0.01;
}
