using NativeLora.Lora;
using NativeLora.Ops;
using NativeLora.Tensors;
using Saved = NativeLora.Model.LayerActivations.Saved;

namespace NativeLora.Model;

/// <summary>
/// The tensors one layer's forward allocates (and keeps for its backward when asked), declared once: the layer
/// forward allocates each from <see cref="Declared"/>, and the memory planner (Training/MemoryEstimate.cs) sums the
/// same declaration, as llm.c's fill_in_activation_sizes feeds both its allocation and its size report.
/// </summary>
public sealed class LayerActivations : IDisposable
{
    public enum Saved { Xn, Rstd1, Q, K, V, O, Lse, H, Hn, Rstd2, Gate, Up, M }

    /// <summary>Dtype and shape of one saved tensor for a forward of this attention shape (activations in dt).</summary>
    public static (DType DType, int[] Shape) Declared(Saved s, ModelConfig c, DType dt, AttentionShape a) => s switch
    {
        Saved.Xn or Saved.H or Saved.Hn => (dt, new[] { a.Tokens, c.HiddenSize }),
        Saved.Rstd1 or Saved.Rstd2 => (DType.F32, new[] { a.Tokens }),
        Saved.Q or Saved.O => (dt, new[] { a.Tokens, c.QDim }),
        Saved.K or Saved.V => (dt, new[] { a.Batch * a.Keys, c.KvDim }), // cached keys gathered in front of the new ones
        Saved.Lse => (DType.F32, new[] { a.Batch * a.Heads * a.SeqLen }),
        Saved.Gate or Saved.Up or Saved.M => (dt, new[] { a.Tokens, c.IntermediateSize }),
        _ => throw new ArgumentOutOfRangeException(nameof(s)),
    };

    /// <summary>Bytes of everything a layer's forward keeps for its backward (the adapters' state aside).</summary>
    public static long DeclaredBytes(ModelConfig c, DType dt, AttentionShape a) =>
        Enum.GetValues<Saved>().Sum(s => { var (t, shape) = Declared(s, c, dt, a); return Tensor.CountElements(shape) * t.SizeOf(); });

    private readonly Tensor?[] _saved = new Tensor?[Enum.GetValues<Saved>().Length];
    private readonly Devices.ComputeDevice _device;
    private readonly ModelConfig _config;
    private readonly DType _dtype;
    private readonly AttentionShape _shape;
    private readonly bool _keep;

    internal LayerActivations(Devices.ComputeDevice device, ModelConfig c, DType dt, AttentionShape shape, bool keep, Tensor x)
    {
        (_device, _config, _dtype, _shape, _keep, X) = (device, c, dt, shape, keep, x);
    }

    /// <summary>The layer's input (owned by the caller).</summary>
    public Tensor X { get; }
    /// <summary>Adapter state of q, k, v, o, gate, up, down (null where a projection has no adapter).</summary>
    public readonly LoraSaved?[] Lora = new LoraSaved?[7];

    public Tensor this[Saved s] => _saved[(int)s] ?? throw new InvalidOperationException($"activation {s} was not kept");
    public Tensor Xn => this[Saved.Xn];
    public Tensor Rstd1 => this[Saved.Rstd1];
    public Tensor Q => this[Saved.Q];
    public Tensor K => this[Saved.K];
    public Tensor V => this[Saved.V];
    public Tensor O => this[Saved.O];
    public Tensor Lse => this[Saved.Lse];
    public Tensor H => this[Saved.H];
    public Tensor Hn => this[Saved.Hn];
    public Tensor Rstd2 => this[Saved.Rstd2];
    public Tensor Gate => this[Saved.Gate];
    public Tensor Up => this[Saved.Up];
    public Tensor M => this[Saved.M];

    internal Tensor Allocate(Saved s)
    {
        var (t, shape) = Declared(s, _config, _dtype, _shape);
        return _saved[(int)s] = _device.Allocate(t, shape);
    }

    /// <summary>Without a backward to feed, tensors are freed as soon as the forward is past them.</summary>
    internal void Done(params Saved[] which)
    {
        if (_keep) return;
        foreach (var s in which)
        {
            _saved[(int)s]?.Dispose();
            _saved[(int)s] = null;
        }
    }

    internal void Adapter(int projection, LoraSaved? state)
    {
        if (_keep) Lora[projection] = state;
        else state?.Dispose();
    }

    public void Dispose()
    {
        foreach (var t in _saved) t?.Dispose();
        foreach (var t in Lora) t?.Dispose();
    }
}

/// <summary>The projections of one decoder layer.</summary>
public readonly record struct LayerProjections(Linear Q, Linear K, Linear V, Linear O, Linear Gate, Linear Up, Linear Down);

/// <summary>
/// One Llama decoder layer (also Mistral and Qwen2):
///   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x)
///   out = h + down_proj(silu(gate_proj(n2)) · up_proj(n2)),                   n2 = rmsnorm(h)
/// One forward for every caller (see <see cref="ForwardContext"/>); the backward walks the same steps in reverse.
/// </summary>
public sealed class DecoderLayer
{
    public int Index { get; }
    public Tensor InputNorm { get; }
    public Tensor PostNorm { get; }
    public Linear QProj { get; }
    public Linear KProj { get; }
    public Linear VProj { get; }
    public Linear OProj { get; }
    public Linear GateProj { get; }
    public Linear UpProj { get; }
    public Linear DownProj { get; }
    public Tensor? InputNormGrad { get; set; }
    public Tensor? PostNormGrad { get; set; }

    public DecoderLayer(int index, Tensor inputNorm, Tensor postNorm, LayerProjections p)
    {
        Index = index;
        InputNorm = inputNorm;
        PostNorm = postNorm;
        (QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj) = (p.Q, p.K, p.V, p.O, p.Gate, p.Up, p.Down);
    }

    /// <summary>
    /// Layer `index` of a checkpoint, from its HF tensor names (model.layers.{index}.…); a projection whose weight is in
    /// <paramref name="quantized"/> (NF4, quantized as it was loaded) is built from that state.
    /// </summary>
    public static DecoderLayer FromParameters(int index, ModelConfig c, IReadOnlyDictionary<string, Tensor> parameters,
        IReadOnlyDictionary<string, Quantization.Nf4Tensor>? quantized = null)
    {
        string p = $"model.layers.{index}.";
        Linear L(string n, bool bias)
        {
            var b = bias ? parameters[p + n + ".bias"] : null;
            return quantized != null && quantized.TryGetValue(p + n + ".weight", out var q) ? new(p + n, q, b) : new(p + n, parameters[p + n + ".weight"], b);
        }
        return new DecoderLayer(index, parameters[p + "input_layernorm.weight"], parameters[p + "post_attention_layernorm.weight"],
            new LayerProjections(L("self_attn.q_proj", c.AttentionBias), L("self_attn.k_proj", c.AttentionBias), L("self_attn.v_proj", c.AttentionBias),
                L("self_attn.o_proj", false), L("mlp.gate_proj", false), L("mlp.up_proj", false), L("mlp.down_proj", false)));
    }

    public IEnumerable<Linear> Linears => new[] { QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj };

    /// <summary>
    /// Runs the layer on x [N, D] into output [N, D]. keep: return the activations for <see cref="Backward"/> (they
    /// hold x, not owned); otherwise each temporary is freed once used and null is returned. With a cache in the
    /// context the new keys/values are written to it; attention is packed or paged as the context says.
    /// </summary>
    public LayerActivations? Forward(ForwardContext f, Tensor x, Tensor output, bool keep)
    {
        if (keep && f.Paged) throw new InvalidOperationException("a paged (decode) forward keeps no activations for a backward");
        var (k, c, s, adapters) = (f.Kernels, f.Config, f.Shape, f.Adapters);
        float eps = (float)c.RmsNormEps;
        var a = new LayerActivations(f.Device, c, x.DType, s, keep, x);
        try
        {
            var xn = a.Allocate(Saved.Xn);
            RmsNormOp.Forward(k, x, InputNorm, xn, a.Allocate(Saved.Rstd1), eps);
            var q = a.Allocate(Saved.Q);
            var keys = a.Allocate(Saved.K);
            var values = a.Allocate(Saved.V);
            int cached = keys.Dim(0) - s.Tokens; // rows in front of the new tokens' keys: cached ones, gathered below
            var (kNew, vNew) = (keys.Slice(cached, s.Tokens), values.Slice(cached, s.Tokens));
            var qkv = Linear.ForwardShared(k, [QProj, KProj, VProj], xn, [q, kNew, vNew], adapters);
            for (int i = 0; i < 3; i++) a.Adapter(i, qkv[i]);
            a.Done(Saved.Xn, Saved.Rstd1);
            RopeOp.Forward(k, new(q, q, c.NumHeads), new(kNew, kNew, c.NumKvHeads), f.Positions, f.Rope.Cos, f.Rope.Sin, c.HeadDim);
            if (f.Cache != null)
            {
                KvCacheOp.Write(k, kNew, f.Cache.Keys[Index], f.CacheRows!);
                KvCacheOp.Write(k, vNew, f.Cache.Values[Index], f.CacheRows!);
                if (f.PrefixRows != null)
                {
                    KvCacheOp.Read(k, f.Cache.Keys[Index], f.PrefixRows, keys.Slice(0, cached));
                    KvCacheOp.Read(k, f.Cache.Values[Index], f.PrefixRows, values.Slice(0, cached));
                }
            }
            var o = a.Allocate(Saved.O);
            if (f.Paged) KvCacheOp.Attend(k, q, f.Cache!.Keys[Index], f.Cache.Values[Index], f.Lengths!, f.PageTable!, o, c, f.Cache.PageSize);
            else AttentionOp.Forward(k, q, keys, values, f.Segments!, o, a.Allocate(Saved.Lse), s);
            a.Done(Saved.Q, Saved.K, Saved.V, Saved.Lse);
            var h = a.Allocate(Saved.H);
            a.Adapter(3, OProj.Forward(k, o, h, adapters));
            a.Done(Saved.O);
            var hn = a.Allocate(Saved.Hn);
            RmsNormOp.Forward(k, h, PostNorm, hn, a.Allocate(Saved.Rstd2), eps, residual: x); // h += x, then its norm
            var gate = a.Allocate(Saved.Gate);
            var up = a.Allocate(Saved.Up);
            var gateUp = Linear.ForwardShared(k, [GateProj, UpProj], hn, [gate, up], adapters);
            a.Adapter(4, gateUp[0]);
            a.Adapter(5, gateUp[1]);
            a.Done(Saved.Hn, Saved.Rstd2);
            var m = a.Allocate(Saved.M);
            SwiGluOp.Forward(k, gate, up, m);
            a.Done(Saved.Gate, Saved.Up);
            a.Adapter(6, DownProj.Forward(k, m, output, adapters));
            ElementwiseOp.AddInto(k, output, h);
            if (keep) return a;
            a.Dispose();
            return null;
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>dOut [N, D] is the gradient of the layer output; writes dX [N, D] (may not alias dOut).</summary>
    public void Backward(ForwardContext f, LayerActivations a, Tensor dOut, Tensor dX)
    {
        var (dev, k, c, s) = (f.Device, f.Kernels, f.Config, f.Shape);
        if (s.Keys != s.SeqLen) throw new NotSupportedException("the backward of a forward after cached keys is not supported");
        int n = dOut.Dim(0);
        var dt = dOut.DType;
        // MLP branch: out = h + down(m)
        using var dM = dev.Allocate(dt, n, c.IntermediateSize);
        DownProj.Backward(k, a.M, a.Lora[6], dOut, dM, accumulate: false);
        using var dGate = dev.Allocate(dt, n, c.IntermediateSize);
        using var dUp = dev.Allocate(dt, n, c.IntermediateSize);
        SwiGluOp.Backward(k, a.Gate, a.Up, dM, dGate, dUp);
        using var dHn = dev.Allocate(dt, n, c.HiddenSize);
        Linear.BackwardShared(k, [GateProj, UpProj], a.Hn, [a.Lora[4], a.Lora[5]], [dGate, dUp], dHn);
        using var dH = dev.Allocate(dt, n, c.HiddenSize);
        RmsNormOp.Backward(k, a.H, PostNorm, dHn, a.Rstd2, dH, PostNormGrad, residualGrad: dOut); // + dOut through the residual
        // attention branch: h = x + o_proj(attn)
        using var dO = dev.Allocate(dt, n, c.QDim);
        OProj.Backward(k, a.O, a.Lora[3], dH, dO, accumulate: false);
        using var dQ = dev.Allocate(dt, n, c.QDim);
        using var dK = dev.Allocate(dt, n, c.KvDim);
        using var dV = dev.Allocate(dt, n, c.KvDim);
        AttentionOp.Backward(k, a.Q, a.K, a.V, f.Segments!, a.O, a.Lse, dO, dQ, dK, dV, s);
        RopeOp.Backward(k, new(dQ, dQ, c.NumHeads), new(dK, dK, c.NumKvHeads), f.Positions, f.Rope.Cos, f.Rope.Sin, c.HeadDim);
        using var dXn = dev.Allocate(dt, n, c.HiddenSize);
        Linear.BackwardShared(k, [QProj, KProj, VProj], a.Xn, [a.Lora[0], a.Lora[1], a.Lora[2]], [dQ, dK, dV], dXn);
        RmsNormOp.Backward(k, a.X, InputNorm, dXn, a.Rstd1, dX, InputNormGrad, residualGrad: dH); // + dH through the residual
    }
}
