using NativeLora.Devices;
using NativeLora.Diagnostics;
using NativeLora.Model;
using NativeLora.Native;
using NativeLora.Tensors;

namespace NativeLora.Cli;

internal static class Commands
{
    internal static ComputeDevice OpenDevice(DeviceOptions o)
    {
        var device = ComputeDevice.Open(ComputeDevice.ParseKind(o.Device));
        Console.Error.WriteLine($"device: {device.Description}");
        return device;
    }

    /// <summary>--model, or the base model the (first) adapter names; either may be a Hub id, which the loaders resolve.</summary>
    internal static string ModelOf(string? model, string? adapter) =>
        model ?? (adapter != null ? Hub.ModelSource.BaseModelOf(adapter) : throw new ArgumentException("give --model (or an --adapter whose adapter_config.json names its base model)"));

    /// <summary>Loads a model directory for inference; a GPTQ/AWQ checkpoint is dequantized on load, and says so.</summary>
    internal static CausalLm LoadModel(ComputeDevice device, string dir, DType dtype)
    {
        if (ModelDirectory.DescribeQuantization(dir) is string q)
            Console.Error.WriteLine($"model: {q} checkpoint, dequantized to {dtype.Name()} on load (no GPTQ/AWQ kernels here: memory and speed are the dense model's)");
        return ModelDirectory.Load(device, dir, dtype);
    }

    public static int Info(InfoOptions o)
    {
        using var device = OpenDevice(o); // first: --device decides which core loads where both are installed
        Console.WriteLine($"native backend: {NativeCore.BackendName} (ABI {NativeCore.AbiVersion})");
        var (free, total) = device.MemoryInfo();
        Console.WriteLine($"memory: {free / (1 << 20):N0} MiB free of {total / (1 << 20):N0} MiB");
        return 0;
    }

    public static int SelfCheck(SelfCheckOptions o)
    {
        if (o.Size < 1 || o.Size > 8192) throw new ArgumentException($"--size must be in 1..8192, got {o.Size}");
        using var device = OpenDevice(o);
        int seed = o.Seed ?? Environment.TickCount & 0x7fffffff;
        Console.WriteLine($"seed {seed}");
        bool ok = true;
        foreach (var r in Diagnostics.SelfCheck.RunGemm(device, o.Size, seed))
        {
            Console.WriteLine($"{(r.Passed ? "ok  " : "FAIL")} {r.Name,-24} rel.err {r.RelativeError:E2} (< {r.Tolerance:E0})  {r.GflopPerSecond,8:F1} GFLOP/s");
            ok &= r.Passed;
        }
        int passed = 0, failed = 0;
        if (o.Kernels)
        {
            var families = o.Families?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            KernelCheck.Run(device, seed, families, onResult: r =>
            {
                Console.WriteLine($"{(r.Passed ? "ok  " : "FAIL")} {r.Family,-13} {r.Name,-52} {r.Measure} {r.Error:E2} (< {r.Tolerance:E0})");
                if (r.Passed) passed++; else failed++;
            });
            Console.WriteLine($"kernel checks on {device.Description}: {passed} passed, {failed} failed ({sw.Elapsed.TotalSeconds:F1} s)");
            ok &= failed == 0;
        }
        Console.WriteLine(ok ? "selfcheck passed" : $"selfcheck FAILED (rerun with --seed {seed})");
        return ok ? 0 : 1;
    }

    public static int InitModel(InitModelOptions o)
    {
        var dtype = DTypeInfo.Parse(o.DType);
        var config = RandomInit.SaveModelDirectory(o.Out, ModelConfig.Load(o.Config), o.Tokenizer, o.Seed, dtype);
        long parameters = CausalLm.ExpectedParameters(config).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        Console.WriteLine($"wrote {o.Out}: {config.ModelType}, {config.NumLayers} layers, hidden {config.HiddenSize}, vocab {config.VocabSize}, {parameters:N0} parameters ({dtype.Name()})");
        return 0;
    }

    public static int Import(ImportOptions o)
    {
        if (o.From != "llama2c") throw new ArgumentException($"unknown import format '{o.From}' (supported: llama2c)");
        var (config, weights) = Llama2cImporter.Read(o.File);
        ModelDirectory.Save(o.Out, config, weights, DType.F32);
        Console.WriteLine($"imported {o.File} -> {o.Out}: {config.NumLayers} layers, hidden {config.HiddenSize}, heads {config.NumHeads}/{config.NumKvHeads} (q/kv), vocab {config.VocabSize}, tied embeddings {config.TieWordEmbeddings}");
        return 0;
    }

    public static int Generate(GenerateOptions o)
    {
        var sampling = new SamplingOptions(o.Temperature, o.TopK, o.TopP, o.RepetitionPenalty, o.Seed);
        sampling.Validate();
        bool hasIds = o.PromptIds != null && o.PromptIds.Any();
        if (hasIds == (o.Prompt != null)) throw new ArgumentException("give exactly one of --prompt or --prompt-ids");
        var modelDir = ModelOf(o.Model, o.Adapter);
        using var device = OpenDevice(o);
        using var model = LoadModel(device, modelDir, device.ResolveDType(o.DType));
        using var adapter = o.Adapter != null ? Lora.LoraAdapter.Load(model, o.Adapter) : null;
        Text.HfTokenizer? tok = null;
        try
        {
            int[] prompt;
            if (hasIds) prompt = o.PromptIds!.ToArray();
            else
            {
                tok = Text.HfTokenizer.Load(modelDir);
                prompt = o.Chat
                    ? new Data.ExampleFormatter(tok, false).PromptIds(ChatOf(o))
                    : tok.Encode(o.Prompt!, addSpecialTokens: true);
            }
            var stop = Text.StopRule.For(Hub.ModelSource.Resolve(modelDir), model.Config, tok, o.Stop);
            var stream = tok != null ? new Text.TokenStreamDecoder(tok, skipSpecialTokens: true, context: prompt) : null;
            var text = stop.NewTextMatcher();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var ids = new Generator(model).Generate(prompt, o.MaxNewTokens, new Sampler(sampling), stop.Ids, id =>
            {
                if (o.PrintIds || stream == null) return true;
                Console.Write(text.Push(stream.Push(id)));
                return !text.Stopped;
            });
            if (o.PrintIds || stream == null) Console.WriteLine(string.Join(",", ids));
            else Console.WriteLine(text.Stopped ? "" : text.Push(stream.Flush()) + text.Flush());
            Console.Error.WriteLine($"{ids.Count} tokens in {clock.Elapsed.TotalSeconds:F2} s ({ids.Count / Math.Max(1e-9, clock.Elapsed.TotalSeconds):F1} tokens/s)");
            return 0;
        }
        finally
        {
            tok?.Dispose();
        }
    }

    private static List<Text.ChatMessage> ChatOf(GenerateOptions o)
    {
        var messages = new List<Text.ChatMessage>();
        if (o.System != null) messages.Add(new Text.ChatMessage("system", o.System));
        messages.Add(new Text.ChatMessage("user", o.Prompt!));
        return messages;
    }

    public static int Merge(MergeOptions o)
    {
        var dtype = DTypeInfo.Parse(o.DType);
        if (!dtype.IsFloat()) throw new ArgumentException($"--dtype must be bf16, f16 or f32, got {o.DType}");
        var modelDir = ModelOf(o.Model, o.Adapters.FirstOrDefault());
        using var device = OpenDevice(o);
        var weights = o.Weights != null && o.Weights.Any() ? o.Weights.ToList() : null;
        Export.LoraMerge.Run(device, Hub.ModelSource.Resolve(modelDir), o.Adapters.Select(a => Hub.ModelSource.Resolve(a)).ToList(), weights, o.Out, dtype, o.MaxShardSize);
        Console.WriteLine($"merged {string.Join(" + ", o.Adapters)} into {modelDir} -> {o.Out} ({dtype.Name()})");
        return 0;
    }

    public static int Plan(PlanOptions o)
    {
        if (o.Method is not ("full" or "lora" or "qlora")) throw new ArgumentException($"--method must be full, lora or qlora, got '{o.Method}'");
        var config = Training.ModelPresets.Resolve(o.Model);
        var lora = new Lora.LoraConfig { R = o.R };
        // the train config's rule for embed_tokens_on_host
        bool onHost = new Training.TrainingConfig { Model = o.Model, Method = o.Method, EmbedTokensOnHost = o.EmbedTokensOnHost }.EmbeddingOnHostFor(config);
        var e = Training.MemoryEstimate.For(config, lora, DTypeInfo.Parse(o.DType), o.MicroBatch, o.Seq, !o.NoCheckpointing, method: o.Method, embeddingOnHost: onHost);
        Console.WriteLine($"{o.Model}, {o.Method}, {o.DType}, LoRA r {o.R} on all projections, micro-batch {o.MicroBatch} × {o.Seq} tokens, checkpointing {!o.NoCheckpointing}, embed_tokens on the {(onHost ? "host" : "device")}:");
        foreach (var line in e.Lines()) Console.WriteLine(line);
        return 0;
    }

    public static int Eval(EvalOptions o)
    {
        var tasks = o.Tasks.Where(t => t.Length > 0).Select(Evaluation.EvalTask.Parse).ToList();
        if (tasks.Count == 0 && o.Run == null) throw new ArgumentException("give --tasks (e.g. ppl:val.jsonl,arc:arc.jsonl) or --run DIR");
        var modelDir = tasks.Count > 0 ? ModelOf(o.Model, o.Adapter) : o.Model;
        var json = new System.Text.Json.Nodes.JsonObject { ["model"] = modelDir, ["adapter"] = o.Adapter };
        if (o.Run != null)
        {
            var metrics = Path.Combine(o.Run, "metrics.jsonl");
            if (!File.Exists(metrics)) throw new FileNotFoundException($"{o.Run}: no metrics.jsonl", metrics);
            var history = Training.StepMetrics.ReadJsonl(metrics);
            var overfit = Evaluation.OverfitReport.Analyze(history);
            Console.WriteLine($"overfitting ({metrics}): {overfit.Summary}");
            json["overfitting"] = overfit.Summary;
        }
        if (tasks.Count > 0)
        {
            using var device = OpenDevice(o);
            using var model = LoadModel(device, modelDir!, device.ResolveDType(o.DType));
            using var tok = Text.HfTokenizer.Load(modelDir!);
            using var judge = o.JudgeUrl == null ? null : new Evaluation.LlmJudge(new Uri(o.JudgeUrl),
                o.JudgeModel ?? throw new ArgumentException("--judge-url needs --judge-model"), Environment.GetEnvironmentVariable(o.JudgeKeyEnv), o.JudgeCache);
            SortedDictionary<string, double>? before = null;
            if (o.Baseline || o.Adapter == null)
                before = Evaluation.EvalRunner.Run(model, tok, tasks, o.MaxSeqLen, o.MaxNewTokens, m => Console.Error.WriteLine($"[base] {m}"), judge);
            SortedDictionary<string, double> after = before!;
            if (o.Adapter != null)
            {
                using var adapter = Lora.LoraAdapter.Load(model, o.Adapter);
                after = Evaluation.EvalRunner.Run(model, tok, tasks, o.MaxSeqLen, o.MaxNewTokens, m => Console.Error.WriteLine($"[adapter] {m}"), judge);
            }
            var baseline = o.Adapter != null && o.Baseline ? before : null;
            Console.WriteLine(Evaluation.EvalRunner.Markdown(after, baseline));
            json["measures"] = new System.Text.Json.Nodes.JsonObject(after.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value)));
            if (baseline != null)
            {
                json["baseline"] = new System.Text.Json.Nodes.JsonObject(baseline.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value)));
                var warnings = Evaluation.EvalRunner.Degradation(after, baseline, o.DegradationThreshold);
                foreach (var w in warnings) Console.WriteLine($"warning: {w}");
                json["warnings"] = new System.Text.Json.Nodes.JsonArray(warnings.Select(w => (System.Text.Json.Nodes.JsonNode?)w).ToArray());
            }
            if (o.Out != null)
            {
                var md = Path.ChangeExtension(o.Out, ".md");
                File.WriteAllText(md, Evaluation.EvalRunner.Markdown(after, baseline) + "\n");
                WritePlot(Path.ChangeExtension(o.Out, ".png"), after, baseline);
            }
        }
        if (o.Out != null)
        {
            File.WriteAllText(o.Out, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"report: {o.Out}");
        }
        return 0;
    }

    // before/after bars per measure, each scaled to the larger of its two values (measures differ by orders
    // of magnitude); perplexity is shown as its log, ppl.nll, and token counts are left out
    private static void WritePlot(string path, IReadOnlyDictionary<string, double> after, IReadOnlyDictionary<string, double>? before)
    {
        var plot = new ScottPlot.Plot();
        var keys = after.Keys.Where(k => !k.EndsWith(".tokens") && k != "ppl").ToList();
        var ticks = new List<ScottPlot.Tick>();
        for (int i = 0; i < keys.Count; i++)
        {
            double a = after[keys[i]];
            double b = before != null && before.TryGetValue(keys[i], out var bv) ? bv : double.NaN;
            double scale = Math.Max(Math.Abs(a), double.IsNaN(b) ? 0 : Math.Abs(b));
            if (scale == 0) scale = 1;
            if (!double.IsNaN(b)) plot.Add.Bar(new ScottPlot.Bar { Position = 3 * i, Value = b / scale, FillColor = ScottPlot.Colors.Gray });
            plot.Add.Bar(new ScottPlot.Bar { Position = 3 * i + 1, Value = a / scale, FillColor = ScottPlot.Colors.SteelBlue });
            ticks.Add(new ScottPlot.Tick(3 * i + 0.5, keys[i]));
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
        plot.YLabel("value / the larger of before and after");
        plot.Title(before != null ? "before (gray) / after (blue)" : "evaluation");
        plot.SavePng(path, Math.Max(600, 120 * keys.Count), 450);
    }

    public static int ExportGguf(ExportGgufOptions o)
    {
        var modelDir = Hub.ModelSource.Resolve(ModelOf(o.Model, o.Adapter));
        if (o.AdapterOnly)
        {
            if (o.Adapter == null) throw new ArgumentException("--adapter-only needs --adapter");
            Export.GgufExport.WriteAdapter(modelDir, Hub.ModelSource.Resolve(o.Adapter), o.Out);
            Console.WriteLine($"wrote {o.Out} (GGUF LoRA adapter, {new FileInfo(o.Out).Length:N0} bytes)");
            return 0;
        }
        var type = Export.GgufExport.ParseType(o.Type);
        using var device = OpenDevice(o);
        Export.GgufExport.Run(device, modelDir, o.Adapter == null ? null : Hub.ModelSource.Resolve(o.Adapter), o.Out, type);
        Console.WriteLine($"wrote {o.Out} ({o.Type}, {new FileInfo(o.Out).Length:N0} bytes)");
        return 0;
    }

    public static int Inspect(InspectOptions o)
    {
        if (!File.Exists(o.File)) throw new FileNotFoundException($"'{o.File}' does not exist", o.File);
        using var probe = File.OpenRead(o.File);
        var magic = new byte[9];
        int got = probe.ReadAtLeast(magic, magic.Length, throwOnEndOfStream: false);
        probe.Close();
        bool gguf = got >= 4 && magic[0] == 'G' && magic[1] == 'G' && magic[2] == 'U' && magic[3] == 'F';
        // safetensors: a u64 header length, then the JSON header, which starts with '{'
        if (!gguf && (got < 9 || magic[8] != '{'))
            throw new InvalidDataException($"'{o.File}': not a GGUF or safetensors file ({(got == 0 ? "it is empty" : $"first bytes {Convert.ToHexString(magic, 0, got)}")})");
        if (gguf)
        {
            using var g = Gguf.GgufFile.Open(o.File);
            Console.WriteLine($"{o.File}: GGUF v{g.Version}, alignment {g.Alignment}, {g.Metadata.Count} metadata keys, {g.Tensors.Count} tensors, data at byte {g.DataOffset:N0}");
            foreach (var (key, value) in g.Metadata)
            {
                var text = value.ToString() ?? "";
                Console.WriteLine($"  {key} = {(text.Length > 120 ? text[..117] + "..." : text)}");
            }
            foreach (var t in g.Tensors.Take(o.MaxTensors))
                Console.WriteLine($"  {t.Name,-32} {t.Type,-6} [{string.Join(", ", t.Dimensions)}] at {t.Offset:N0}, {t.ByteLength:N0} bytes");
            if (g.Tensors.Count > o.MaxTensors) Console.WriteLine($"  ... {g.Tensors.Count - o.MaxTensors} more");
            return 0;
        }
        using var f = SafeTensors.SafeTensorsFile.Open(o.File);
        Console.WriteLine($"{o.File}: safetensors, header {f.HeaderLength:N0} bytes, {f.Tensors.Count} tensors, {f.DataLength:N0} data bytes");
        foreach (var (k, v) in f.Metadata) Console.WriteLine($"  __metadata__.{k} = {v}");
        var quant = Quantization.QuantizedCheckpoint.Read(Path.GetDirectoryName(Path.GetFullPath(o.File))!);
        if (quant != null) Console.WriteLine($"  quantization_config (config.json beside it): {quant.Describe()}");
        foreach (var t in f.Tensors.Take(o.MaxTensors))
            Console.WriteLine($"  {t.Name,-60} {t.DType,-5} [{string.Join(", ", t.Shape)}] bytes {t.DataBegin:N0}..{t.DataEnd:N0}{QuantizationNote(quant, t)}");
        if (f.Tensors.Count > o.MaxTensors) Console.WriteLine($"  ... {f.Tensors.Count - o.MaxTensors} more");
        return 0;
    }

    // What a packed GPTQ/AWQ tensor holds (the weight it encodes and how), for inspect.
    private static string QuantizationNote(Quantization.QuantizedCheckpoint? q, SafeTensors.SafeTensorInfo t)
    {
        if (q == null) return "";
        string group = q.GroupSize == -1 ? "per-channel" : $"groups of {q.GroupSize}";
        int perWord = 32 / q.Bits;
        bool gptq = q.Method == "gptq";
        if (t.Name.EndsWith(".qweight") && t.Shape.Length == 2)
        {
            long outF = gptq ? t.Shape[1] : t.Shape[1] * perWord, inF = gptq ? t.Shape[0] * perWord : t.Shape[0];
            return $"  <- {q.Method.ToUpperInvariant()} {q.Bits}-bit weight [{outF}, {inF}], {group}, {perWord} codes per int32 along {(gptq ? "the input" : "the output (AWQ order)")}";
        }
        if (t.Name.EndsWith(".qzeros")) return gptq ? $"  <- zero points - 1 ({q.Bits}-bit, packed along the output)" : "  <- zero points (4-bit, AWQ order)";
        if (t.Name.EndsWith(".scales")) return $"  <- f16 scale per group and output";
        if (t.Name.EndsWith(".g_idx")) return $"  <- group of each input channel{(q.DescAct ? " (act-order)" : "")}";
        return "  (dense)";
    }
}
