using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>What one decoder layer's forward keeps for its backward.</summary>
public sealed class LayerActivations : IDisposable
{
    public Tensor X = null!, Xn = null!, Rstd1 = null!, Q = null!, K = null!, V = null!, O = null!, Lse = null!;
    public Tensor H = null!, Hn = null!, Rstd2 = null!, Gate = null!, Up = null!, M = null!;
    /// <summary>Adapter state of q, k, v, o, gate, up, down (null where a projection has no adapter).</summary>
    public readonly LoraSaved?[] Lora = new LoraSaved?[7];

    public void Dispose()
    {
        // X is the layer's input, owned by the caller
        foreach (var t in new[] { Xn, Rstd1, Q, K, V, O, Lse, H, Hn, Rstd2, Gate, Up, M }) t?.Dispose();
        foreach (var t in Lora) t?.Dispose();
    }
}

/// <summary>
/// One Llama decoder layer (also Mistral and Qwen2):
///   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x)
///   out = h + down_proj(silu(gate_proj(n2)) · up_proj(n2)),                   n2 = rmsnorm(h)
/// Forward keeps the activations its backward needs; the backward walks the same steps in reverse.
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

    public DecoderLayer(int index, Tensor inputNorm, Tensor postNorm, Linear q, Linear k, Linear v, Linear o, Linear gate, Linear up, Linear down)
    {
        Index = index;
        InputNorm = inputNorm;
        PostNorm = postNorm;
        QProj = q; KProj = k; VProj = v; OProj = o;
        GateProj = gate; UpProj = up; DownProj = down;
    }

    public IEnumerable<Linear> Linears => new[] { QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj };

    /// <summary>
    /// Runs the layer on x [N, D] into output [N, D]; the returned activations hold x (not owned).
    /// adapterSlots (serving only) picks each row's served adapter.
    /// </summary>
    public LayerActivations Forward(ComputeDevice device, KernelSet k, ModelConfig c, Tensor x, Tensor output,
        Tensor positions, Tensor segments, Tensor cos, Tensor sin, AttentionShape shape, AdapterRows? adapterSlots = null)
    {
        int n = x.Dim(0);
        var dt = x.DType;
        var a = new LayerActivations { X = x };
        a.Xn = device.Allocate(dt, n, c.HiddenSize);
        a.Rstd1 = device.Allocate(DType.F32, n);
        RmsNormOp.Forward(k, x, InputNorm, a.Xn, a.Rstd1, (float)c.RmsNormEps);
        a.Q = device.Allocate(dt, n, c.QDim);
        a.K = device.Allocate(dt, n, c.KvDim);
        a.V = device.Allocate(dt, n, c.KvDim);
        a.Lora[0] = QProj.Forward(k, a.Xn, a.Q, adapterSlots);
        a.Lora[1] = KProj.Forward(k, a.Xn, a.K, adapterSlots);
        a.Lora[2] = VProj.Forward(k, a.Xn, a.V, adapterSlots);
        RopeOp.Forward(k, a.Q, a.Q, positions, cos, sin, c.NumHeads, c.HeadDim);
        RopeOp.Forward(k, a.K, a.K, positions, cos, sin, c.NumKvHeads, c.HeadDim);
        a.O = device.Allocate(dt, n, c.QDim);
        a.Lse = device.Allocate(DType.F32, shape.Batch * c.NumHeads * shape.SeqLen);
        AttentionOp.Forward(k, a.Q, a.K, a.V, segments, a.O, a.Lse, shape);
        a.H = device.Allocate(dt, n, c.HiddenSize);
        a.Lora[3] = OProj.Forward(k, a.O, a.H, adapterSlots);
        ElementwiseOp.AddInto(k, a.H, x);
        a.Hn = device.Allocate(dt, n, c.HiddenSize);
        a.Rstd2 = device.Allocate(DType.F32, n);
        RmsNormOp.Forward(k, a.H, PostNorm, a.Hn, a.Rstd2, (float)c.RmsNormEps);
        a.Gate = device.Allocate(dt, n, c.IntermediateSize);
        a.Up = device.Allocate(dt, n, c.IntermediateSize);
        a.Lora[4] = GateProj.Forward(k, a.Hn, a.Gate, adapterSlots);
        a.Lora[5] = UpProj.Forward(k, a.Hn, a.Up, adapterSlots);
        a.M = device.Allocate(dt, n, c.IntermediateSize);
        SwiGluOp.Forward(k, a.Gate, a.Up, a.M);
        a.Lora[6] = DownProj.Forward(k, a.M, output, adapterSlots);
        ElementwiseOp.AddInto(k, output, a.H);
        return a;
    }

    /// <summary>dOut [N, D] is the gradient of the layer output; writes dX [N, D] (may not alias dOut).</summary>
    public void Backward(ComputeDevice device, KernelSet k, ModelConfig c, LayerActivations a, Tensor dOut, Tensor dX,
        Tensor positions, Tensor segments, Tensor cos, Tensor sin, AttentionShape shape)
    {
        int n = dOut.Dim(0);
        var dt = dOut.DType;
        // MLP branch: out = h + down(m)
        using var dM = device.Allocate(dt, n, c.IntermediateSize);
        DownProj.Backward(k, a.M, a.Lora[6], dOut, dM, accumulate: false);
        using var dGate = device.Allocate(dt, n, c.IntermediateSize);
        using var dUp = device.Allocate(dt, n, c.IntermediateSize);
        SwiGluOp.Backward(k, a.Gate, a.Up, dM, dGate, dUp);
        using var dHn = device.Allocate(dt, n, c.HiddenSize);
        GateProj.Backward(k, a.Hn, a.Lora[4], dGate, dHn, accumulate: false);
        UpProj.Backward(k, a.Hn, a.Lora[5], dUp, dHn, accumulate: true);
        using var dH = device.Allocate(dt, n, c.HiddenSize);
        RmsNormOp.Backward(k, a.H, PostNorm, dHn, a.Rstd2, dH, PostNormGrad);
        ElementwiseOp.AddInto(k, dH, dOut); // residual
        // attention branch: h = x + o_proj(attn)
        using var dO = device.Allocate(dt, n, c.QDim);
        OProj.Backward(k, a.O, a.Lora[3], dH, dO, accumulate: false);
        using var dQ = device.Allocate(dt, n, c.QDim);
        using var dK = device.Allocate(dt, n, c.KvDim);
        using var dV = device.Allocate(dt, n, c.KvDim);
        AttentionOp.Backward(k, a.Q, a.K, a.V, segments, a.O, a.Lse, dO, dQ, dK, dV, shape);
        RopeOp.Backward(k, dQ, dQ, positions, cos, sin, c.NumHeads, c.HeadDim);
        RopeOp.Backward(k, dK, dK, positions, cos, sin, c.NumKvHeads, c.HeadDim);
        using var dXn = device.Allocate(dt, n, c.HiddenSize);
        QProj.Backward(k, a.Xn, a.Lora[0], dQ, dXn, accumulate: false);
        KProj.Backward(k, a.Xn, a.Lora[1], dK, dXn, accumulate: true);
        VProj.Backward(k, a.Xn, a.Lora[2], dV, dXn, accumulate: true);
        RmsNormOp.Backward(k, a.X, InputNorm, dXn, a.Rstd1, dX, InputNormGrad);
        ElementwiseOp.AddInto(k, dX, dH); // residual
    }

    /// <summary>
    /// One decoding step for B rows: x [B, D] holds each row's newest token; its k/v go into the
    /// paged cache at cache row cacheRows[b] and attention reads the first lengths[b] positions of
    /// row b through its page table (pageTable [B, maxPages]). adapterSlots as in Forward.
    /// </summary>
    public void DecodeStep(ComputeDevice device, KernelSet k, ModelConfig c, Tensor x, Tensor output, Tensor positions,
        Tensor cacheRows, Tensor lengths, Tensor pageTable, Tensor kCache, Tensor vCache, int pageSize, Tensor cos, Tensor sin, AdapterRows? adapterSlots = null)
    {
        int b = x.Dim(0);
        var dt = x.DType;
        using var xn = device.Allocate(dt, b, c.HiddenSize);
        using var rstd = device.Allocate(DType.F32, b);
        RmsNormOp.Forward(k, x, InputNorm, xn, rstd, (float)c.RmsNormEps);
        using var q = device.Allocate(dt, b, c.QDim);
        using var kk = device.Allocate(dt, b, c.KvDim);
        using var v = device.Allocate(dt, b, c.KvDim);
        QProj.Forward(k, xn, q, adapterSlots)?.Dispose();
        KProj.Forward(k, xn, kk, adapterSlots)?.Dispose();
        VProj.Forward(k, xn, v, adapterSlots)?.Dispose();
        RopeOp.Forward(k, q, q, positions, cos, sin, c.NumHeads, c.HeadDim);
        RopeOp.Forward(k, kk, kk, positions, cos, sin, c.NumKvHeads, c.HeadDim);
        KvCacheOp.Write(k, kk, kCache, cacheRows);
        KvCacheOp.Write(k, v, vCache, cacheRows);
        using var o = device.Allocate(dt, b, c.QDim);
        KvCacheOp.Attend(k, q, kCache, vCache, lengths, pageTable, o, c, pageSize);
        using var h = device.Allocate(dt, b, c.HiddenSize);
        OProj.Forward(k, o, h, adapterSlots)?.Dispose();
        ElementwiseOp.AddInto(k, h, x);
        using var hn = device.Allocate(dt, b, c.HiddenSize);
        RmsNormOp.Forward(k, h, PostNorm, hn, rstd, (float)c.RmsNormEps);
        using var gate = device.Allocate(dt, b, c.IntermediateSize);
        using var up = device.Allocate(dt, b, c.IntermediateSize);
        GateProj.Forward(k, hn, gate, adapterSlots)?.Dispose();
        UpProj.Forward(k, hn, up, adapterSlots)?.Dispose();
        SwiGluOp.Forward(k, gate, up, gate);
        DownProj.Forward(k, gate, output, adapterSlots)?.Dispose();
        ElementwiseOp.AddInto(k, output, h);
    }
}
