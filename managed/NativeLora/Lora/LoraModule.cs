using NativeLora.Devices;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Lora;

/// <summary>
/// The adapter of one linear layer: A [r, in] and B [out, r] as f32 master weights (what the
/// optimizer updates and what is saved), their copies in the compute dtype (the same tensors when
/// that is f32), f32 gradients, the scale (alpha/r, or alpha/√r with rsLoRA) and the dropout.
/// </summary>
public sealed class LoraModule : IDisposable
{
    public string Target { get; }          // e.g. model.layers.0.self_attn.q_proj
    public int Rank { get; }
    public float Scale { get; }
    public float Dropout { get; }
    public Tensor A { get; }
    public Tensor B { get; }
    public Tensor AGrad { get; }
    public Tensor BGrad { get; }
    public Tensor ACompute { get; }
    public Tensor BCompute { get; }
    /// <summary>DoRA's magnitude vector m [out] (f32) and its gradient; null for plain LoRA.</summary>
    public Tensor? Magnitude { get; }
    public Tensor? MagnitudeGrad { get; }
    public bool IsDora => Magnitude != null;

    /// <summary>Seed of this module's dropout mask for the current micro-batch (set by the trainer).</summary>
    public ulong DropoutSeed { get; set; }

    /// <summary>Dropout applies only while training; evaluation and generation see the plain adapter.</summary>
    public bool Training { get; set; }

    public float EffectiveDropout => Training ? Dropout : 0f;

    public LoraModule(ComputeDevice device, string target, int inFeatures, int outFeatures, int rank, float scale, float dropout, DType computeDType, bool dora = false)
    {
        if (rank < 1) throw new ArgumentException($"LoRA rank must be ≥ 1, got {rank}");
        if (!(dropout >= 0 && dropout < 1)) throw new ArgumentException($"lora_dropout must be in [0, 1), got {dropout}");
        Target = target;
        Rank = rank;
        Scale = scale;
        Dropout = dropout;
        A = device.Allocate(DType.F32, rank, inFeatures);
        B = device.Allocate(DType.F32, outFeatures, rank);
        AGrad = device.Allocate(DType.F32, rank, inFeatures);
        BGrad = device.Allocate(DType.F32, outFeatures, rank);
        ACompute = computeDType == DType.F32 ? A : device.Allocate(computeDType, rank, inFeatures);
        BCompute = computeDType == DType.F32 ? B : device.Allocate(computeDType, outFeatures, rank);
        if (dora)
        {
            Magnitude = device.Allocate(DType.F32, outFeatures);
            MagnitudeGrad = device.Allocate(DType.F32, outFeatures);
        }
    }

    public int InFeatures => A.Dim(1);
    public int OutFeatures => B.Dim(0);
    public long ParameterCount => A.ElementCount + B.ElementCount + (Magnitude?.ElementCount ?? 0);

    /// <summary>The trainable tensors with their gradients, in a fixed order (optimizer and checkpoints rely on it).</summary>
    public IEnumerable<(string Name, Tensor Value, Tensor Grad)> Trainables()
    {
        yield return ("lora_A", A, AGrad);
        yield return ("lora_B", B, BGrad);
        if (Magnitude != null) yield return ("lora_magnitude_vector", Magnitude, MagnitudeGrad!);
    }

    /// <summary>Refreshes the compute-dtype copies after the master weights changed.</summary>
    public void SyncCompute(NativeLora.Kernels.KernelSet k)
    {
        if (!ReferenceEquals(ACompute, A)) ElementwiseOp.Cast(k, A, ACompute);
        if (!ReferenceEquals(BCompute, B)) ElementwiseOp.Cast(k, B, BCompute);
    }

    public void ZeroGradients(NativeLora.Kernels.KernelSet k)
    {
        foreach (var (_, _, g) in Trainables()) ElementwiseOp.Zero(k, g);
    }

    public void Dispose()
    {
        foreach (var t in new[] { A, B, AGrad, BGrad, Magnitude, MagnitudeGrad }) t?.Dispose();
        if (!ReferenceEquals(ACompute, A)) ACompute.Dispose();
        if (!ReferenceEquals(BCompute, B)) BCompute.Dispose();
    }
}
