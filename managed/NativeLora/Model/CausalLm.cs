using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>
/// A Llama-family causal LM on one device: embedding → decoder layers → RMSNorm → output projection,
/// with the loss computed by the chunked fused cross-entropy. Parameters are held under their HF
/// names; full-parameter f32 gradients can be switched on (used by the gradient checks; LoRA training
/// keeps the base frozen and never allocates them).
/// </summary>
public sealed class CausalLm : IDisposable
{
    public ModelConfig Config { get; }
    public ComputeDevice Device { get; }
    public KernelSet Kernels { get; set; }
    public DType DType { get; }
    public IReadOnlyDictionary<string, Tensor> Parameters => _parameters;
    public IReadOnlyDictionary<string, Tensor> Gradients => _gradients;
    /// <summary>The embedding the forward uses: the base weight, or a trainable copy (PEFT modules_to_save).</summary>
    public Tensor Embedding => _embeddingCopy ?? _parameters["model.embed_tokens.weight"];
    public Tensor FinalNorm { get; }
    /// <summary>lm_head.weight (or the embedding when tied), or its trainable copy.</summary>
    public Tensor OutputWeight => _outputCopy ?? (Config.TieWordEmbeddings ? Embedding : _parameters["lm_head.weight"]);

    private Tensor? _embeddingCopy, _outputCopy, _embeddingCopyGrad, _outputCopyGrad;

    /// <summary>
    /// Routes the forward through a trainable copy of embed_tokens or lm_head (compute dtype) and its
    /// backward into grad (f32); null restores the frozen base weight.
    /// </summary>
    public void UseTrainableCopy(string module, Tensor? compute, Tensor? grad)
    {
        if (Config.TieWordEmbeddings) throw new NotSupportedException("modules_to_save on a model with tied embeddings is not supported (the embedding and lm_head are one tensor)");
        switch (module)
        {
            case "embed_tokens": _embeddingCopy = compute; _embeddingCopyGrad = grad; break;
            case "lm_head": _outputCopy = compute; _outputCopyGrad = grad; break;
            default: throw new ArgumentException($"modules_to_save supports embed_tokens and lm_head, not '{module}'");
        }
    }
    public IReadOnlyList<DecoderLayer> Layers { get; }
    public int CrossEntropyChunkRows { get; set; } = 1024;

    /// <summary>Keep only each layer's input during the forward and recompute the layer in the backward.</summary>
    public bool GradientCheckpointing { get; set; }

    private readonly Dictionary<string, Tensor> _parameters;
    private readonly Dictionary<string, Tensor> _gradients = new();
    private readonly Tensor _cos, _sin;
    public RopeTables Rope => new(_cos, _sin);

    /// <summary>Every tensor a checkpoint of this config must hold, with its PyTorch shape.</summary>
    public static List<(string Name, int[] Shape)> ExpectedParameters(ModelConfig c)
    {
        var list = new List<(string, int[])> { ("model.embed_tokens.weight", new[] { c.VocabSize, c.HiddenSize }) };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            list.Add((p + "input_layernorm.weight", new[] { c.HiddenSize }));
            list.Add((p + "self_attn.q_proj.weight", new[] { c.QDim, c.HiddenSize }));
            list.Add((p + "self_attn.k_proj.weight", new[] { c.KvDim, c.HiddenSize }));
            list.Add((p + "self_attn.v_proj.weight", new[] { c.KvDim, c.HiddenSize }));
            if (c.AttentionBias)
            {
                list.Add((p + "self_attn.q_proj.bias", new[] { c.QDim }));
                list.Add((p + "self_attn.k_proj.bias", new[] { c.KvDim }));
                list.Add((p + "self_attn.v_proj.bias", new[] { c.KvDim }));
            }
            list.Add((p + "self_attn.o_proj.weight", new[] { c.HiddenSize, c.QDim }));
            list.Add((p + "post_attention_layernorm.weight", new[] { c.HiddenSize }));
            list.Add((p + "mlp.gate_proj.weight", new[] { c.IntermediateSize, c.HiddenSize }));
            list.Add((p + "mlp.up_proj.weight", new[] { c.IntermediateSize, c.HiddenSize }));
            list.Add((p + "mlp.down_proj.weight", new[] { c.HiddenSize, c.IntermediateSize }));
        }
        list.Add(("model.norm.weight", new[] { c.HiddenSize }));
        if (!c.TieWordEmbeddings) list.Add(("lm_head.weight", new[] { c.VocabSize, c.HiddenSize }));
        return list;
    }

    // the decoder projections' weights: what QLoRA stores in NF4
    private static readonly string[] s_projectionWeights =
        [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
         ".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight"];

    /// <summary>True for a decoder projection's weight (model.layers.N.{self_attn.q,k,v,o_proj; mlp.gate,up,down_proj}.weight): what QLoRA quantizes.</summary>
    public static bool IsProjectionWeight(string name) =>
        name.StartsWith("model.layers.", StringComparison.Ordinal) && s_projectionWeights.Any(s => name.EndsWith(s, StringComparison.Ordinal));

    /// <summary>
    /// Takes ownership of the tensors. Every missing, extra or wrongly shaped tensor is reported at
    /// once, by name, before anything runs. <paramref name="quantized"/> holds decoder projection weights already in
    /// NF4 (a QLoRA load quantizes each as it is read): those layers start as <see cref="QuantizeLinears"/> leaves them,
    /// and <paramref name="parameters"/> then lacks their dense weights.
    /// </summary>
    public CausalLm(ComputeDevice device, ModelConfig config, Dictionary<string, Tensor> parameters, IReadOnlyDictionary<string, Quantization.Nf4Tensor>? quantized = null)
    {
        Device = device;
        Kernels = device.Kernels;
        Config = config;
        quantized ??= new Dictionary<string, Quantization.Nf4Tensor>();
        var problems = new List<string>();
        var expected = ExpectedParameters(config);
        foreach (var (name, shape) in expected)
        {
            if (quantized.TryGetValue(name, out var q))
            {
                if (parameters.ContainsKey(name)) problems.Add($"tensor '{name}' is given both dense and in NF4");
                else if (!q.Shape.SequenceEqual(shape)) problems.Add($"NF4 tensor '{name}' has shape [{string.Join(", ", q.Shape)}], expected [{string.Join(", ", shape)}]");
            }
            else if (!parameters.TryGetValue(name, out var t)) problems.Add($"missing tensor '{name}' [{string.Join(", ", shape)}]");
            else if (!t.Shape.SequenceEqual(shape)) problems.Add($"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
        }
        var names = expected.Select(e => e.Name).ToHashSet();
        foreach (var name in parameters.Keys.Where(n => !names.Contains(n)).OrderBy(n => n))
            problems.Add($"unexpected tensor '{name}'");
        foreach (var name in quantized.Keys.Where(n => !names.Contains(n) || !IsProjectionWeight(n)).OrderBy(n => n))
            problems.Add($"unexpected NF4 tensor '{name}' (only decoder projection weights are quantized)");
        if (problems.Count > 0)
            throw new InvalidDataException($"the weights do not match the {config.ModelType} config ({problems.Count} problem(s)):\n  " + string.Join("\n  ", problems));
        DType = parameters["model.embed_tokens.weight"].DType;
        var wrongType = parameters.Where(p => p.Value.DType != DType).Select(p => $"{p.Key} is {p.Value.DType.Name()}")
            .Concat(quantized.Where(p => p.Value.DType != DType).Select(p => $"{p.Key} was quantized from {p.Value.DType.Name()}")).ToList();
        if (wrongType.Count > 0) throw new InvalidDataException($"all weights must share one dtype ({DType.Name()}): {string.Join(", ", wrongType)}");

        _parameters = parameters;
        FinalNorm = parameters["model.norm.weight"];
        var layers = Enumerable.Range(0, config.NumLayers).Select(i => DecoderLayer.FromParameters(i, config, parameters, quantized)).ToList();
        Layers = layers;
        // in the order QuantizeLinears adds them
        _quantized.AddRange(layers.SelectMany(l => l.Linears).Where(l => l.Quantized != null));
        var (cos, sin) = NativeLora.Kernels.Rope.BuildTable(config.HeadDim, config.MaxPositionEmbeddings, config.RopeTheta, config.RopeScaling);
        _cos = device.Allocate(DType.F32, config.MaxPositionEmbeddings, config.HeadDim / 2);
        _sin = device.Allocate(DType.F32, config.MaxPositionEmbeddings, config.HeadDim / 2);
        _cos.CopyFrom<float>(cos);
        _sin.CopyFrom<float>(sin);
    }

    /// <summary>
    /// QLoRA: stores every decoder projection in NF4 with double quantization (embeddings, norms and
    /// the output layer stay in the compute dtype, as in QLoRA). The full-precision tensors are freed.
    /// <paramref name="baseMatmul"/> says how their base products are computed (fused from the codes or through a scratch).
    /// On a model loaded with <c>quantizeProjections</c> (<see cref="ModelDirectory.Load"/>) the projections are NF4
    /// already and only <paramref name="baseMatmul"/> is set.
    /// </summary>
    public void QuantizeLinears(Quantization.QloraMatmul baseMatmul = Quantization.QloraMatmul.Auto)
    {
        if (_gradients.Count > 0) throw new InvalidOperationException("a model with full-parameter gradients cannot be quantized");
        foreach (var layer in Layers)
            foreach (var lin in layer.Linears)
            {
                lin.BaseMatmul = baseMatmul;
                if (lin.Quantized != null) continue;
                lin.Quantize(Kernels);
                _parameters.Remove(lin.Name + ".weight");
                _quantized.Add(lin);
            }
        Device.EmptyCache(); // the full-precision weights' segments go back to the device
    }

    /// <summary>
    /// Moves the frozen embedding table to host memory that kernels read in place (QLoRA's default): the
    /// embedding kernel gathers each batch's rows across the bus, so only those rows travel and the table
    /// (1 GiB for Llama 3 8B in bf16) leaves device memory. The same kernel reads it, so nothing changes
    /// numerically. lm_head stays on the device. Not for tied embeddings (the table is lm_head too),
    /// a trainable embedding (modules_to_save) or full-parameter gradients.
    /// </summary>
    public void PlaceEmbeddingOnHost()
    {
        const string name = "model.embed_tokens.weight";
        CheckEmbeddingOnHost(Config);
        if (_embeddingCopy != null)
            throw new NotSupportedException("embed_tokens cannot live on the host when it is trained (modules_to_save): its copy and gradient are on the device");
        if (_gradients.ContainsKey(name)) throw new NotSupportedException("embed_tokens cannot live on the host with full-parameter gradients");
        var table = _parameters[name];
        if (table.OnHost) return;
        var host = Device.AllocateHost(table.DType, table.Shape);
        table.CopyTo(host);
        Device.Synchronize();
        _parameters[name] = host;
        table.Dispose();
        Device.EmptyCache();
    }

    /// <summary>Refuses embed_tokens in host memory where the config ties it to lm_head (ModelDirectory.Load checks before it loads).</summary>
    public static void CheckEmbeddingOnHost(ModelConfig config)
    {
        if (config.TieWordEmbeddings)
            throw new NotSupportedException("embed_tokens cannot live on the host when it is tied to lm_head (tie_word_embeddings): the output projection reads the whole table every step");
    }

    private readonly List<Linear> _quantized = new();

    /// <summary>NF4 storage of the quantized projections in bits per parameter (null when none is quantized).</summary>
    public double? QuantizedBitsPerParameter => _quantized.Count == 0 ? null
        : 8.0 * _quantized.Sum(l => l.Quantized!.StorageBytes) / _quantized.Sum(l => l.Quantized!.ElementCount);

    /// <summary>Allocates zeroed f32 gradients for every parameter (full fine-tuning and gradient checks; f32 models only).</summary>
    public void EnableFullGradients()
    {
        if (DType != DType.F32) throw new InvalidOperationException($"full-parameter gradients need an f32 model, this one is {DType.Name()}");
        foreach (var (name, p) in _parameters)
            if (!_gradients.ContainsKey(name)) _gradients[name] = Device.Allocate(DType.F32, p.Shape);
        foreach (var layer in Layers)
        {
            layer.InputNormGrad = _gradients[$"model.layers.{layer.Index}.input_layernorm.weight"];
            layer.PostNormGrad = _gradients[$"model.layers.{layer.Index}.post_attention_layernorm.weight"];
            foreach (var lin in layer.Linears)
            {
                lin.WeightGrad = _gradients[lin.Name + ".weight"];
                if (lin.Bias != null) lin.BiasGrad = _gradients[lin.Name + ".bias"];
            }
        }
        ZeroGradients();
    }

    public void ZeroGradients()
    {
        foreach (var g in _gradients.Values) ElementwiseOp.Zero(Kernels, g);
    }

    /// <summary>Forward and backward of the mean next-token loss. Gradients accumulate into <see cref="Gradients"/> (when
    /// enabled) and into attached adapters; returns the mean loss over counted tokens and their number.</summary>
    public (double Loss, int Count) ForwardBackward(TokenBatch batch, float? gradScale = null)
    {
        int n = batch.Tokens, d = Config.HiddenSize;
        using var f = ForwardContext.For(this, batch);
        using var tape = new Tape();
        using var normed = Forward(f, tape);
        using var dNormed = Device.Allocate(DType, n, d);
        var dOutW = _outputCopyGrad ?? _gradients.GetValueOrDefault(Config.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
        var (loss, count) = CrossEntropyOp.ForwardBackward(Kernels, normed, OutputWeight, batch.Labels, dNormed, dOutW, CrossEntropyChunkRows, gradScale);
        Backward(f, tape, dNormed);
        return (loss, count);
    }

    /// <summary>Mean loss over counted tokens of a forward pass (no gradients, nothing kept): evaluation.</summary>
    public (double Loss, int Count) Loss(TokenBatch batch)
    {
        using var f = ForwardContext.For(this, batch);
        using var normed = Forward(f);
        return CrossEntropyOp.ForwardBackward(Kernels, normed, OutputWeight, batch.Labels, null, null, CrossEntropyChunkRows);
    }

    /// <summary>Logits [tokens, vocab] (f32) of a forward pass (no loss, nothing kept).</summary>
    public float[] Logits(TokenBatch batch)
    {
        using var f = ForwardContext.For(this, batch);
        using var normed = Forward(f);
        return LogitsOf(normed);
    }

    /// <summary>The output projection of final hidden rows [R, D] → f32 logits [R·vocab] on the host.</summary>
    internal float[] LogitsOf(Tensor normed)
    {
        using var logits = Device.Allocate(DType.F32, normed.Dim(0), Config.VocabSize);
        Gemm.Run(normed, OutputWeight, logits, transB: true);
        return logits.ToArray<float>();
    }

    /// <summary>What the training forward keeps for its backward.</summary>
    private sealed class Tape : IDisposable
    {
        /// <summary>Layer inputs: Hidden[0] the embeddings, Hidden[l+1] layer l's output (the last: the final norm's input).</summary>
        public readonly List<Tensor> Hidden = new();
        /// <summary>Each layer's activations (empty with gradient checkpointing: the backward recomputes them).</summary>
        public readonly List<LayerActivations> Layers = new();
        public Tensor? FinalRstd;

        public void Dispose()
        {
            foreach (var a in Layers) a.Dispose();
            foreach (var h in Hidden) h.Dispose();
            FinalRstd?.Dispose();
        }
    }

    /// <summary>
    /// The model forward: embedding → decoder layers → final RMSNorm, as the context says (packed or paged attention,
    /// KV-cache writes, served adapters). Returns the final hidden states [tokens, D] (the caller owns them); keeps nothing.
    /// </summary>
    public Tensor Forward(ForwardContext f) => Forward(f, null);

    private Tensor Forward(ForwardContext f, Tape? tape)
    {
        var k = f.Kernels;
        int n = f.Tokens, d = Config.HiddenSize;
        if (f.Ids == null || f.HostIds == null) throw new ArgumentException("a model forward needs the tokens' ids in its context");
        // without a tape, x (the current input) and y (the tensor being written) are the only hidden states alive
        Tensor x = Device.Allocate(DType, n, d), y = null!;
        Tensor? rstd = null;
        try
        {
            tape?.Hidden.Add(x);
            EmbeddingOp.Forward(k, f.Ids, f.HostIds, Embedding, x);
            foreach (var layer in Layers)
            {
                y = Device.Allocate(DType, n, d);
                tape?.Hidden.Add(y);
                if (layer.Forward(f, x, y, keep: tape != null && !GradientCheckpointing) is { } a) tape!.Layers.Add(a);
                if (tape == null) x.Dispose();
                (x, y) = (y, null!);
            }
            y = Device.Allocate(DType, n, d);
            rstd = Device.Allocate(DType.F32, n);
            RmsNormOp.Forward(k, x, FinalNorm, y, rstd, (float)Config.RmsNormEps);
            if (tape != null) tape.FinalRstd = rstd;
            else
            {
                rstd.Dispose();
                x.Dispose();
            }
            return y;
        }
        catch
        {
            y?.Dispose();
            if (tape == null) // on the tape they go with the tape
            {
                x.Dispose();
                rstd?.Dispose();
            }
            else if (tape.FinalRstd == null) rstd?.Dispose();
            throw;
        }
    }

    // the backward of Forward(f, tape) from the gradient of its result; recomputes layers under gradient checkpointing
    private void Backward(ForwardContext f, Tape tape, Tensor dNormed)
    {
        var k = f.Kernels;
        int n = f.Tokens, d = Config.HiddenSize;
        using var dH = Device.Allocate(DType, n, d);
        _gradients.TryGetValue("model.norm.weight", out var dFinalNorm);
        RmsNormOp.Backward(k, tape.Hidden[^1], FinalNorm, dNormed, tape.FinalRstd!, dH, dFinalNorm);
        using var dPrev = Device.Allocate(DType, n, d);
        var (cur, next) = (dH, dPrev);
        for (int l = Layers.Count - 1; l >= 0; l--)
        {
            if (GradientCheckpointing)
            {
                using var scratch = Device.Allocate(DType, n, d);
                using var a = Layers[l].Forward(f, tape.Hidden[l], scratch, keep: true)!;
                Layers[l].Backward(f, a, cur, next);
            }
            else Layers[l].Backward(f, tape.Layers[l], cur, next);
            (cur, next) = (next, cur);
        }
        if ((_embeddingCopyGrad ?? _gradients.GetValueOrDefault("model.embed_tokens.weight")) is Tensor dEmb)
            EmbeddingOp.Backward(k, f.Ids!, cur, dEmb);
    }

    public void Dispose()
    {
        foreach (var t in _parameters.Values) t.Dispose();
        foreach (var t in _gradients.Values) t.Dispose();
        foreach (var l in _quantized) l.Quantized!.Dispose();
        _cos.Dispose();
        _sin.Dispose();
    }
}
