using System.Diagnostics;
using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Quantization;

/// <summary>gptq, awq; rtn (GPTQ's quantizer without error feedback, same bits/group/sym; packed as GPTQ) and rtn-awq
/// (AWQ's zero-point quantizer without search; packed as AWQ) are the round-to-nearest baselines.</summary>
public enum PtqMethod { Gptq, Awq, Rtn, RtnAwq }

/// <summary>What <see cref="PostTrainingQuantizer"/> does: the method, GPTQ's settings, AWQ's group size, the packing of calibration samples.</summary>
public sealed record PtqOptions(PtqMethod Method, GptqOptions Gptq, int AwqGroupSize = 128, int ChunkTokens = 2048)
{
    public bool GptqFormat => Method is PtqMethod.Gptq or PtqMethod.Rtn;
    public int Bits => GptqFormat ? Gptq.Bits : 4;
    public int GroupSize => GptqFormat ? Gptq.GroupSize : AwqGroupSize;
}

/// <summary>Per layer: seconds, and per linear the method's search result (GPTQ: none; AWQ: the chosen α and clip use).</summary>
public sealed record PtqLayerReport(int Layer, double Seconds, IReadOnlyDictionary<string, string> Notes);

public sealed record PtqReport(double Seconds, int Samples, int Tokens, long PeakDeviceBytes, IReadOnlyList<PtqLayerReport> Layers);

/// <summary>
/// Post-training quantization of an HF model directory into a GPTQ or AWQ ("GEMM") checkpoint, layer by layer on the
/// compute device, in f32:
/// <list type="bullet">
/// <item>the calibration sequences are packed into chunks (segments keep them apart) and embedded on the host; their
/// hidden states for the current layer are the only activations kept across layers;</item>
/// <item>one decoder layer at a time is read from the checkpoint onto the device, through
/// <see cref="LayerForward"/> (the decoder's own layer forward), and freed before the next;</item>
/// <item>GPTQ follows AutoGPTQ's <c>true_sequential</c>: q/k/v, then o, then gate/up, then down, each group's inputs
/// captured again after the earlier groups were quantized; the layer's quantized outputs feed the next layer;</item>
/// <item>AWQ follows AutoAWQ: inputs captured once, the duo-scaling search for input_layernorm→q/k/v,
/// v→o (skipped when the shapes differ under GQA), post_attention_layernorm→gate/up and up→down, scales folded into
/// the previous op, then the clipping search (not q/k), then 4-bit asymmetric groups; the next layer sees the
/// layer's unquantized outputs.</item>
/// </list>
/// Device memory: one layer's f32 weights, the captured hidden states (AWQ also its reference outputs), one chunk's
/// activations and one Hessian at a time.
/// </summary>
public static class PostTrainingQuantizer
{
    private sealed class Chunk : IDisposable
    {
        public int Tokens, Sequences;
        public Tensor Positions = null!, Segments = null!;
        public Tensor X = null!;
        public void Dispose() { Positions.Dispose(); Segments.Dispose(); X?.Dispose(); }
    }

    /// <summary>Checks that every projection of the model fits the format (packing and group size), before any work.</summary>
    public static void CheckFits(ModelConfig c, PtqOptions o)
    {
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c).Where(p => p.Name.StartsWith("model.layers.0.") && p.Shape.Length == 2))
        {
            int outF = shape[0], inF = shape[1];
            if (o.GptqFormat) GptqFormat.CheckShape(o.Bits, outF, inF, name);
            else AwqFormat.CheckShape(outF, inF, o.GroupSize, name);
            if (o.GroupSize != -1 && inF % o.GroupSize != 0)
                throw new ArgumentException($"{name}: {inF} input features are not a multiple of the group size {o.GroupSize} (use a group size that divides it, or -1 for per-channel)");
        }
    }

    /// <summary>Quantizes the model in modelDir and writes the checkpoint (GPTQ or AWQ GEMM format) to outDir.</summary>
    public static PtqReport Run(ComputeDevice device, string modelDir, IReadOnlyList<int[]> calibration, string outDir, PtqOptions o,
        Action<int, int, string>? progress = null)
    {
        if (Path.GetFullPath(outDir) == Path.GetFullPath(modelDir)) throw new ArgumentException("the output directory must differ from the model's");
        CheckFits(ModelDirectory.ReadConfig(modelDir), o);
        var outputs = new Dictionary<string, (SafeTensorsDType DType, long[] Shape, byte[] Data)>();
        var report = QuantizeLayers(device, modelDir, calibration, o, progress, (layer, quantized) =>
        {
            foreach (var (name, q) in quantized) Store(outputs, name, q, o.GptqFormat, layer.Linears.First(x => x.Name == name).Bias);
            if (o.Method == PtqMethod.Awq) // the norms carry AWQ's folded scales
            {
                outputs[$"model.layers.{layer.Index}.input_layernorm.weight"] = F16(layer.InputNorm);
                outputs[$"model.layers.{layer.Index}.post_attention_layernorm.weight"] = F16(layer.PostNorm);
            }
        });
        using var files = ShardedSafeTensors.Open(modelDir);
        Write(files, ModelDirectory.ReadConfig(modelDir), outputs, outDir, o);
        Text.HfTokenizer.CopyFiles(modelDir, outDir, "generation_config.json");
        return report;
    }

    /// <summary>
    /// The same quantization without packing: every parameter of the model as f32, the projections dequantized (and,
    /// for AWQ, the norms with their folded scales). Group sizes need only divide the input features (tests and
    /// benchmarks on models whose shapes do not fit the formats' packing).
    /// </summary>
    public static (Dictionary<string, float[]> Weights, PtqReport Report) RunUnpacked(ComputeDevice device, string modelDir, IReadOnlyList<int[]> calibration, PtqOptions o)
    {
        var weights = new Dictionary<string, float[]>();
        var report = QuantizeLayers(device, modelDir, calibration, o, null, (layer, quantized) =>
        {
            foreach (var (name, q) in quantized) weights[name + ".weight"] = q.Dequantize();
            foreach (var lin in layer.Linears) if (lin.Bias != null) weights[lin.Name + ".bias"] = lin.Bias.ToArray<float>();
            weights[$"model.layers.{layer.Index}.input_layernorm.weight"] = layer.InputNorm.ToArray<float>();
            weights[$"model.layers.{layer.Index}.post_attention_layernorm.weight"] = layer.PostNorm.ToArray<float>();
        });
        using var files = ShardedSafeTensors.Open(modelDir);
        var c = ModelDirectory.ReadConfig(modelDir);
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
            if (!weights.ContainsKey(name)) weights[name] = ModelDirectory.ReadAsFloat32(device, files, name, shape);
        return (weights, report);
    }

    private static PtqReport QuantizeLayers(ComputeDevice device, string modelDir, IReadOnlyList<int[]> calibration, PtqOptions o,
        Action<int, int, string>? progress, Action<DecoderLayer, List<(string, QuantizedWeight)>> sink)
    {
        var sw = Stopwatch.StartNew();
        o.Gptq.Validate();
        if (!o.GptqFormat && o.AwqGroupSize < 1) throw new ArgumentException("AWQ needs a positive group size");
        bool calibrated = o.Method is PtqMethod.Gptq or PtqMethod.Awq;
        if (calibrated && calibration.Count == 0) throw new ArgumentException("no calibration samples");
        var c = ModelDirectory.ReadConfig(modelDir);
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c).Where(p => p.Name.StartsWith("model.layers.0.") && p.Shape.Length == 2))
            if (o.GroupSize != -1 && shape[1] % o.GroupSize != 0)
                throw new ArgumentException($"{name}: {shape[1]} input features are not a multiple of the group size {o.GroupSize} (use a group size that divides it, or -1 for per-channel)");
        using var files = ShardedSafeTensors.Open(modelDir);
        ModelDirectory.CheckCheckpoint(files, c, modelDir);
        foreach (var s in calibration)
        {
            if (s.Length == 0) throw new ArgumentException("an empty calibration sample");
            if (s.Length > c.MaxPositionEmbeddings) throw new ArgumentException($"a calibration sample of {s.Length} tokens is longer than the model's {c.MaxPositionEmbeddings} positions");
            foreach (var id in s) if ((uint)id >= (uint)c.VocabSize) throw new ArgumentException($"calibration token id {id} is outside the vocabulary ({c.VocabSize})");
        }
        device.ResetPeak();
        var (cosH, sinH) = Rope.BuildTable(c.HeadDim, c.MaxPositionEmbeddings, c.RopeTheta, c.RopeScaling);
        using var cos = device.Allocate(DType.F32, c.MaxPositionEmbeddings, c.HeadDim / 2);
        using var sin = device.Allocate(DType.F32, c.MaxPositionEmbeddings, c.HeadDim / 2);
        cos.CopyFrom<float>(cosH);
        sin.CopyFrom<float>(sinH);

        var chunks = calibrated ? Embed(device, files, c, calibration, Math.Max(o.ChunkTokens, calibration.Max(s => s.Length))) : new List<Chunk>();
        var layerReports = new List<PtqLayerReport>();
        try
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                var lsw = Stopwatch.StartNew();
                progress?.Invoke(l, c.NumLayers, $"layer {l}");
                var notes = new Dictionary<string, string>();
                var layer = LoadLayer(device, files, c, l);
                try
                {
                    var quantized = o.Method switch
                    {
                        PtqMethod.Gptq => GptqLayer(device, c, layer, chunks, cos, sin, o.Gptq),
                        PtqMethod.Awq => AwqLayer(device, c, layer, chunks, cos, sin, o.AwqGroupSize, notes),
                        PtqMethod.Rtn => layer.Linears.Select(lin => (lin.Name, GptqQuantizer.RoundToNearest(device, lin.Weight, o.Gptq.Bits, o.Gptq.GroupSize, o.Gptq.Sym))).ToList(),
                        _ => layer.Linears.Select(lin => (lin.Name, QuantizeAwq(device, lin.Weight, o.AwqGroupSize, null))).ToList(),
                    };
                    sink(layer, quantized);
                }
                finally
                {
                    DisposeLayer(layer);
                }
                layerReports.Add(new PtqLayerReport(l, lsw.Elapsed.TotalSeconds, notes));
                progress?.Invoke(l + 1, c.NumLayers, $"layer {l}");
            }
        }
        finally
        {
            foreach (var ch in chunks) ch.Dispose();
        }
        return new PtqReport(sw.Elapsed.TotalSeconds, calibration.Count, calibration.Sum(s => s.Length), device.PeakLiveBytes, layerReports);
    }

    /// <summary>
    /// Every projection's input over the calibration tokens, from the unquantized model (each layer fed the previous
    /// layer's unquantized outputs): name → [tokens, in] f32. For per-linear checks of the algorithms.
    /// </summary>
    public static Dictionary<string, float[]> CaptureLinearInputs(ComputeDevice device, string modelDir, IReadOnlyList<int[]> calibration)
    {
        var c = ModelDirectory.ReadConfig(modelDir);
        using var files = ShardedSafeTensors.Open(modelDir);
        var (cosH, sinH) = Rope.BuildTable(c.HeadDim, c.MaxPositionEmbeddings, c.RopeTheta, c.RopeScaling);
        using var cos = device.Allocate(DType.F32, c.MaxPositionEmbeddings, c.HeadDim / 2);
        using var sin = device.Allocate(DType.F32, c.MaxPositionEmbeddings, c.HeadDim / 2);
        cos.CopyFrom<float>(cosH);
        sin.CopyFrom<float>(sinH);
        var chunks = Embed(device, files, c, calibration, calibration.Max(s => s.Length));
        var result = new Dictionary<string, List<float>>();
        try
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                var layer = LoadLayer(device, files, c, l);
                try
                {
                    foreach (var ch in chunks)
                    {
                        var y = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
                        using (var a = LayerForward(device, c, layer, ch, ch.X, y, cos, sin))
                            foreach (var (lin, x) in new[] { (layer.QProj, a.Xn), (layer.KProj, a.Xn), (layer.VProj, a.Xn), (layer.OProj, a.O), (layer.GateProj, a.Hn), (layer.UpProj, a.Hn), (layer.DownProj, a.M) })
                            {
                                if (!result.TryGetValue(lin.Name, out var list)) result[lin.Name] = list = new List<float>();
                                list.AddRange(x.ToArray<float>());
                            }
                        ch.X.Dispose();
                        ch.X = y;
                    }
                }
                finally
                {
                    DisposeLayer(layer);
                }
            }
        }
        finally
        {
            foreach (var ch in chunks) ch.Dispose();
        }
        return result.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray());
    }

    /// <summary>
    /// The one call into the decoder's layer forward: x [tokens, D] of a packed chunk into output, returning the
    /// activations (inputs of each projection group: Xn, O, Hn, M; and H = x + attention). Kept alone so a change of the
    /// forward's signature touches one place.
    /// </summary>
    private static LayerActivations LayerForward(ComputeDevice device, ModelConfig c, DecoderLayer layer, Chunk ch, Tensor x, Tensor output, Tensor cos, Tensor sin)
    {
        using var f = new ForwardContext
        {
            Device = device, Kernels = device.Kernels, Config = c, Rope = new RopeTables(cos, sin), Positions = ch.Positions, Segments = ch.Segments,
            Shape = new Ops.AttentionShape(1, ch.Tokens, c.NumHeads, c.NumKvHeads, c.HeadDim),
        };
        return layer.Forward(f, x, output, keep: true)!;
    }

    // ---- GPTQ ----

    private static List<(string, QuantizedWeight)> GptqLayer(ComputeDevice device, ModelConfig c, DecoderLayer layer, List<Chunk> chunks, Tensor cos, Tensor sin, GptqOptions o)
    {
        var result = new List<(string, QuantizedWeight)>();
        var groups = new (Linear[] Linears, Func<LayerActivations, Tensor> Input)[]
        {
            ([layer.QProj, layer.KProj, layer.VProj], a => a.Xn),
            ([layer.OProj], a => a.O),
            ([layer.GateProj, layer.UpProj], a => a.Hn),
            ([layer.DownProj], a => a.M),
        };
        foreach (var (linears, input) in groups)
        {
            int n = linears[0].InFeatures;
            using var acc = new HessianAccumulator(device, n);
            foreach (var ch in chunks)
            {
                using var y = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
                using var a = LayerForward(device, c, layer, ch, ch.X, y, cos, sin);
                acc.Add(input(a), ch.Sequences);
            }
            foreach (var lin in linears)
            {
                using var h = device.Allocate(DType.F32, n, n);
                acc.H.CopyTo(h);
                using var w = device.Allocate(DType.F32, lin.OutFeatures, n);
                lin.Weight.CopyTo(w);
                var q = GptqQuantizer.Quantize(device, w, h, o);
                lin.Weight.CopyFrom<float>(q.Dequantize()); // later groups see the quantized weights
                result.Add((lin.Name, q));
            }
        }
        // the quantized layer's outputs are the next layer's inputs
        foreach (var ch in chunks)
        {
            var y = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
            using (LayerForward(device, c, layer, ch, ch.X, y, cos, sin)) { }
            ch.X.Dispose();
            ch.X = y;
        }
        return result;
    }

    // ---- AWQ ----

    private sealed record ScaleGroup(string Name, Tensor? PrevNorm, Linear? PrevLinear, Linear[] Linears, Func<LayerActivations, Tensor> Input, bool LossOnH);

    private static List<(string, QuantizedWeight)> AwqLayer(ComputeDevice device, ModelConfig c, DecoderLayer layer, List<Chunk> chunks, Tensor cos, Tensor sin, int groupSize, Dictionary<string, string> notes)
    {
        var k = device.Kernels;
        var groups = new List<ScaleGroup>
        {
            new("qkv", layer.InputNorm, null, [layer.QProj, layer.KProj, layer.VProj], a => a.Xn, true),
        };
        // AutoAWQ scales v→o only when v_proj and o_proj have one shape (not under GQA)
        if (layer.VProj.OutFeatures == layer.OProj.OutFeatures && layer.VProj.InFeatures == layer.OProj.InFeatures)
            groups.Add(new("o", null, layer.VProj, [layer.OProj], a => a.O, true));
        else notes["o"] = "v->o scaling skipped (GQA shapes differ)";
        groups.Add(new("gate_up", layer.PostNorm, null, [layer.GateProj, layer.UpProj], a => a.Hn, false));
        groups.Add(new("down", null, layer.UpProj, [layer.DownProj], a => a.M, false));

        int totalTokens = chunks.Sum(ch => ch.Tokens);
        int step = Math.Max(1, totalTokens / 512); // _compute_best_clip: n_sample_token 512
        var inputs = new (string Key, Func<LayerActivations, Tensor> Get, int N)[]
        {
            ("xn", a => a.Xn, c.HiddenSize), ("o", a => a.O, c.QDim), ("hn", a => a.Hn, c.HiddenSize), ("m", a => a.M, c.IntermediateSize),
        };
        var sums = inputs.ToDictionary(i => i.Key, i => { var t = device.Allocate(DType.F32, i.N); t.ZeroBytes(); return t; });
        var samples = inputs.ToDictionary(i => i.Key, _ => new List<float>());
        var refH = new List<Tensor>();
        var refOut = new List<Tensor>();
        try
        {
            // 1. capture: reference outputs, |x| sums, the clip search's token samples
            int offset = 0;
            foreach (var ch in chunks)
            {
                var y = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
                refOut.Add(y);
                using var a = LayerForward(device, c, layer, ch, ch.X, y, cos, sin);
                var h = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
                a.H.CopyTo(h);
                refH.Add(h);
                foreach (var (key, get, n) in inputs)
                {
                    Awq.InputMean(k, get(a).View<float>(), sums[key].View<float>(), ch.Tokens, n);
                    var host = get(a).ToArray<float>();
                    for (int t = 0; t < ch.Tokens; t++)
                        if ((offset + t) % step == 0) samples[key].AddRange(host.AsSpan(t * n, n).ToArray());
                }
                offset += ch.Tokens;
            }
            var xMean = inputs.ToDictionary(i => i.Key, i => sums[i.Key].ToArray<float>().Select(v => v / totalTokens).ToArray());
            string KeyOf(ScaleGroup g) => g.Name switch { "qkv" => "xn", "o" => "o", "gate_up" => "hn", _ => "m" };

            // 2. scale search for every group on the original weights (AutoAWQ searches all, then applies)
            var best = new List<(ScaleGroup G, float[] S)>();
            foreach (var g in groups)
            {
                var (s, ratio, err) = SearchScale(device, c, layer, chunks, cos, sin, g, xMean[KeyOf(g)], g.LossOnH ? refH : refOut, groupSize);
                notes[g.Name] = $"alpha {ratio:0.00} (loss {err:E3})";
                best.Add((g, s));
            }
            // 3. fold the scales into the previous op; the captured inputs of the scaled linears are divided by them
            foreach (var (g, s) in best)
            {
                using var st = device.Allocate(DType.F32, s.Length);
                st.CopyFrom<float>(s);
                if (g.PrevNorm != null) Awq.Scale(k, g.PrevNorm.View<float>(), st.View<float>(), 1, rows: true);
                else
                {
                    // scale_fc_fc: the previous linear's output rows (and bias) are divided
                    Awq.Scale(k, g.PrevLinear!.Weight.View<float>(), st.View<float>(), g.PrevLinear.InFeatures, rows: true);
                    if (g.PrevLinear.Bias != null) Awq.Scale(k, g.PrevLinear.Bias.View<float>(), st.View<float>(), 1, rows: true);
                }
                foreach (var lin in g.Linears) Awq.Scale(k, lin.Weight.View<float>(), st.View<float>(), lin.InFeatures, rows: false);
                var smp = samples[KeyOf(g)];
                for (int i = 0; i < smp.Count; i++) smp[i] /= s[i % s.Length];
            }
            // 4. clipping (not q/k: their product goes through q·kᵀ), then quantize all seven
            var result = new List<(string, QuantizedWeight)>();
            foreach (var (lin, key) in new[] { (layer.QProj, "xn"), (layer.KProj, "xn"), (layer.VProj, "xn"), (layer.OProj, "o"), (layer.GateProj, "hn"), (layer.UpProj, "hn"), (layer.DownProj, "m") })
            {
                int rows = lin.OutFeatures, n = lin.InFeatures, g = n / groupSize;
                if (lin != layer.QProj && lin != layer.KProj)
                {
                    var smp = samples[key];
                    int tokens = smp.Count / n;
                    using var x = device.Allocate(DType.F32, tokens, n);
                    x.CopyFrom<float>(smp.ToArray());
                    using var maxVal = device.Allocate(DType.F32, rows * g);
                    Awq.ClipSearch(k, lin.Weight.View<float>(), x.View<float>(), maxVal.View<float>(), rows, n, tokens, groupSize, 4);
                    Awq.Clamp(k, lin.Weight.View<float>(), maxVal.View<float>(), rows, n, groupSize);
                }
                result.Add((lin.Name, QuantizeAwq(device, lin.Weight, groupSize, null)));
            }
            // 5. the next layer sees this layer's unquantized outputs
            for (int i = 0; i < chunks.Count; i++)
            {
                chunks[i].X.Dispose();
                chunks[i].X = refOut[i];
            }
            refOut.Clear();
            return result;
        }
        finally
        {
            foreach (var t in sums.Values) t.Dispose();
            foreach (var t in refH) t.Dispose();
            foreach (var t in refOut) t.Dispose();
        }
    }

    /// <summary>AWQ's group quantization of w [out, in] (f32, on the device), with per-column scales s (null: none).</summary>
    public static QuantizedWeight QuantizeAwq(ComputeDevice device, Tensor w, int groupSize, float[]? s)
    {
        var k = device.Kernels;
        int rows = w.Dim(0), n = w.Dim(1), groups = n / groupSize;
        using var dst = device.Allocate(DType.F32, rows, n);
        using var st = device.Allocate(DType.F32, n);
        st.CopyFrom<float>(s ?? Enumerable.Repeat(1f, n).ToArray());
        using var codes = device.Allocate(DType.I32, rows, n);
        using var scales = device.Allocate(DType.F32, groups, rows);
        using var zeros = device.Allocate(DType.F32, groups, rows);
        Awq.Quantize(k, w.View<float>(), dst.View<float>(), st.View<float>(), codes.View<int>(), scales.View<float>(), zeros.View<float>(), rows, n, groupSize, 4, writeCodes: true);
        return new QuantizedWeight(4, groupSize, rows, n, codes.ToArray<int>(), scales.ToArray<float>(),
            zeros.ToArray<float>().Select(v => (int)v).ToArray(), QuantizedWeight.TrivialGIdx(n, groupSize));
    }

    /// <summary>
    /// _search_best_scale: w̄ = mean over the group's rows of |w|/max|w| per quantization group, x̄ = mean |x|; for α in
    /// 0, 0.05, …, 0.95: s = clamp(x̄^α / (w̄^(1−α) + 1e-4), 1e-4) / √(max s · min s), W ← Q(W·s)/s, loss = mean square of the
    /// block output against the unquantized one (H for the attention groups, the layer output for the MLP groups; the
    /// other parts of the layer are unchanged, so the difference is the inspected module's). Weights are restored after.
    /// </summary>
    private static (float[] Scales, double Ratio, double Loss) SearchScale(ComputeDevice device, ModelConfig c, DecoderLayer layer, List<Chunk> chunks,
        Tensor cos, Tensor sin, ScaleGroup g, float[] xMean, List<Tensor> reference, int groupSize)
    {
        var k = device.Kernels;
        int n = g.Linears[0].InFeatures;
        using var wSum = device.Allocate(DType.F32, n);
        wSum.ZeroBytes();
        int totalRows = 0;
        var originals = new List<Tensor>();
        try
        {
            foreach (var lin in g.Linears)
            {
                using var amax = device.Allocate(DType.F32, lin.OutFeatures * (n / groupSize));
                Awq.GroupAbsMax(k, lin.Weight.View<float>(), amax.View<float>(), lin.OutFeatures, n, groupSize);
                Awq.WeightMean(k, lin.Weight.View<float>(), amax.View<float>(), wSum.View<float>(), lin.OutFeatures, n, groupSize);
                totalRows += lin.OutFeatures;
                var copy = device.Allocate(DType.F32, lin.Weight.Shape);
                lin.Weight.CopyTo(copy);
                originals.Add(copy);
            }
            var wMean = wSum.ToArray<float>().Select(v => v / totalRows).ToArray();
            using var st = device.Allocate(DType.F32, n);
            using var codes = device.Allocate(DType.I32, 1);
            using var dummy = device.Allocate(DType.F32, 1);
            float[]? bestS = null;
            double bestErr = double.PositiveInfinity, bestRatio = -1;
            int tokens = chunks.Sum(ch => ch.Tokens);
            for (int r = 0; r < 20; r++)
            {
                float ratio = r / 20f;
                var s = new float[n];
                for (int i = 0; i < n; i++) s[i] = MathF.Max(MathF.Pow(xMean[i], ratio) / (MathF.Pow(wMean[i], 1 - ratio) + 1e-4f), 1e-4f);
                float norm = MathF.Sqrt(s.Max() * s.Min());
                for (int i = 0; i < n; i++) { s[i] /= norm; if (!float.IsFinite(s[i])) s[i] = 1f; }
                st.CopyFrom<float>(s);
                for (int j = 0; j < g.Linears.Length; j++)
                    Awq.Quantize(k, originals[j].View<float>(), g.Linears[j].Weight.View<float>(), st.View<float>(), codes.View<int>(), dummy.View<float>(), dummy.View<float>(),
                        g.Linears[j].OutFeatures, n, groupSize, 4, writeCodes: false);
                double err = 0;
                for (int i = 0; i < chunks.Count; i++)
                {
                    var ch = chunks[i];
                    using var y = device.Allocate(DType.F32, ch.Tokens, c.HiddenSize);
                    using var a = LayerForward(device, c, layer, ch, ch.X, y, cos, sin);
                    using var part = device.Allocate(DType.F32, ch.Tokens);
                    Awq.SquaredDiffRows(k, reference[i].View<float>(), (g.LossOnH ? a.H : y).View<float>(), part.View<float>(), ch.Tokens, c.HiddenSize);
                    foreach (var v in part.ToArray<float>()) err += v;
                }
                err /= (double)tokens * c.HiddenSize;
                if (err < bestErr) { bestErr = err; bestRatio = ratio; bestS = s; }
            }
            for (int j = 0; j < g.Linears.Length; j++) originals[j].CopyTo(g.Linears[j].Weight);
            if (bestS == null) throw new InvalidOperationException($"layer {layer.Index} {g.Name}: the AWQ scale search found no finite loss (NaN in the calibration activations?)");
            return (bestS, bestRatio, bestErr);
        }
        finally
        {
            foreach (var t in originals) t.Dispose();
        }
    }

    // ---- model I/O ----

    private static unsafe List<Chunk> Embed(ComputeDevice device, ShardedSafeTensors files, ModelConfig c, IReadOnlyList<int[]> samples, int chunkTokens)
    {
        var chunks = new List<Chunk>();
        var info = files.Get("model.embed_tokens.weight");
        byte* table = files.GetPointer("model.embed_tokens.weight");
        int d = c.HiddenSize, size = info.DType.ElementSize();
        int i = 0;
        try
        {
            while (i < samples.Count)
            {
                var group = new List<int[]> { samples[i++] };
                while (i < samples.Count && group.Sum(s => s.Length) + samples[i].Length <= chunkTokens) group.Add(samples[i++]);
                int tokens = group.Sum(s => s.Length);
                var x = new float[(long)tokens * d];
                var pos = new int[tokens];
                var seg = new int[tokens];
                int t = 0;
                for (int s = 0; s < group.Count; s++)
                    for (int p = 0; p < group[s].Length; p++, t++)
                    {
                        FloatConversion.ToFloat32(info.DType, table + (long)group[s][p] * d * size, x.AsSpan(t * d, d));
                        pos[t] = p;
                        seg[t] = s;
                    }
                var ch = new Chunk { Tokens = tokens, Sequences = group.Count };
                chunks.Add(ch);
                ch.Positions = device.Allocate(DType.I32, tokens);
                ch.Segments = device.Allocate(DType.I32, tokens);
                ch.X = device.Allocate(DType.F32, tokens, d);
                ch.Positions.CopyFrom<int>(pos);
                ch.Segments.CopyFrom<int>(seg);
                ch.X.CopyFrom<float>(x);
            }
            return chunks;
        }
        catch
        {
            foreach (var ch in chunks) ch.Dispose();
            throw;
        }
    }

    private static DecoderLayer LoadLayer(ComputeDevice device, ShardedSafeTensors files, ModelConfig c, int l)
    {
        string p = $"model.layers.{l}.";
        var shapes = CausalLm.ExpectedParameters(c).Where(e => e.Name.StartsWith(p)).ToDictionary(e => e.Name, e => e.Shape);
        Tensor T(string name)
        {
            var t = device.Allocate(DType.F32, shapes[name]);
            t.CopyFrom<float>(ModelDirectory.ReadAsFloat32(device, files, name, shapes[name]));
            return t;
        }
        Linear L(string n, bool bias) => new(p + n, T(p + n + ".weight"), bias ? T(p + n + ".bias") : null);
        return new DecoderLayer(l, T(p + "input_layernorm.weight"), T(p + "post_attention_layernorm.weight"), new LayerProjections(
            L("self_attn.q_proj", c.AttentionBias), L("self_attn.k_proj", c.AttentionBias), L("self_attn.v_proj", c.AttentionBias),
            L("self_attn.o_proj", false), L("mlp.gate_proj", false), L("mlp.up_proj", false), L("mlp.down_proj", false)));
    }

    private static void DisposeLayer(DecoderLayer layer)
    {
        layer.InputNorm.Dispose();
        layer.PostNorm.Dispose();
        foreach (var lin in layer.Linears) { lin.Weight.Dispose(); lin.Bias?.Dispose(); }
    }

    private static (SafeTensorsDType, long[], byte[]) F16(Tensor t) =>
        (SafeTensorsDType.F16, t.Shape.Select(d => (long)d).ToArray(), ModelDirectory.Encode(t.ToArray<float>(), DType.F16));

    private static byte[] Bytes<T>(T[] a) where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()).ToArray();

    private static void Store(Dictionary<string, (SafeTensorsDType, long[], byte[])> outputs, string name, QuantizedWeight q, bool gptqFormat, Tensor? bias)
    {
        static long[] L(int[] s) => s.Select(d => (long)d).ToArray();
        var p = gptqFormat ? GptqFormat.Pack(q, name) : AwqFormat.Pack(q, name);
        outputs[name + ".qweight"] = (SafeTensorsDType.I32, L(p.QWeightShape), Bytes(p.QWeight));
        outputs[name + ".qzeros"] = (SafeTensorsDType.I32, L(p.QZerosShape), Bytes(p.QZeros));
        outputs[name + ".scales"] = (SafeTensorsDType.F16, L(p.ScalesShape), Bytes(p.Scales));
        if (p.GIdx != null) outputs[name + ".g_idx"] = (SafeTensorsDType.I32, [q.InFeatures], Bytes(p.GIdx));
        if (bias != null) outputs[name + ".bias"] = F16(bias);
    }

    private static void Write(ShardedSafeTensors files, ModelConfig c, Dictionary<string, (SafeTensorsDType DType, long[] Shape, byte[] Data)> outputs, string outDir, PtqOptions o)
    {
        Directory.CreateDirectory(outDir);
        var writer = new ShardedSafeTensorsWriter(5L << 30);
        writer.SetMetadata("format", "pt");
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
        {
            string module = name[..name.LastIndexOf('.')];
            if (outputs.ContainsKey(module + ".qweight"))
            {
                if (name.EndsWith(".bias")) continue; // written with its linear below
                foreach (var suffix in new[] { ".qweight", ".qzeros", ".scales", ".g_idx", ".bias" })
                    if (outputs.TryGetValue(module + suffix, out var e)) writer.Add(module + suffix, e.DType, e.Shape, e.Data);
                continue;
            }
            if (outputs.TryGetValue(name, out var v)) { writer.Add(name, v.DType, v.Shape, v.Data); continue; }
            string n = name;
            writer.Add(name, SafeTensorsDType.F16, shape.Select(d => (long)d).ToArray(), () => ModelDirectory.Encode(files.ReadAsFloat32(n), DType.F16));
        }
        writer.Write(outDir);
        ModelDirectory.WriteConfig(outDir, c, DType.F16, QuantizedCheckpoint.ConfigJson(o));
    }
}
