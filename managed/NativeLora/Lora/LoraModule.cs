using NativeLora.Devices;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Training;

namespace NativeLora.Lora;

/// <summary>
/// The adapter of one linear layer: A [r, in] and B [out, r] as f32 master weights (what the
/// optimizer updates and what is saved), their copies in the compute dtype (the same tensors when
/// that is f32), f32 gradients, the scale (alpha/r, or alpha/√r with rsLoRA) and the dropout.
/// The tensors are views of a <see cref="ParameterArena"/>.
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

    /// <summary>A module with a small arena of its own (tests, selfcheck); an adapter lays all its modules out in one.</summary>
    public LoraModule(ComputeDevice device, string target, int inFeatures, int outFeatures, int rank, float scale, float dropout, DType computeDType, bool dora = false)
        : this(target, rank, scale, dropout, OwnArena(device, target, inFeatures, outFeatures, rank, dropout, computeDType, dora), 0, 1, dora ? 2 : -1, ownsArena: true)
    {
    }

    /// <summary>A module whose A, B (and magnitude, ≥ 0 for DoRA) are entries of an arena laid out by its adapter.</summary>
    internal LoraModule(string target, int rank, float scale, float dropout, ParameterArena arena, int a, int b, int magnitude, bool ownsArena = false)
    {
        Validate(rank, dropout);
        Target = target;
        Rank = rank;
        Scale = scale;
        Dropout = dropout;
        Arena = arena;
        AEntry = a;
        _ownsArena = ownsArena;
        (A, AGrad, ACompute) = (arena.Value(a), arena.Grad(a), arena.ComputeCopy(a));
        (B, BGrad, BCompute) = (arena.Value(b), arena.Grad(b), arena.ComputeCopy(b));
        if (magnitude >= 0) (Magnitude, MagnitudeGrad) = (arena.Value(magnitude), arena.Grad(magnitude));
    }

    /// <summary>The arena holding this module's tensors (shared with the adapter's other modules).</summary>
    public ParameterArena Arena { get; }
    /// <summary>A's entry in the arena: modules whose A entries follow each other can be stacked (<see cref="Ops.LoraOp.StackedA"/>).</summary>
    public int AEntry { get; }
    private readonly bool _ownsArena;

    internal static void Validate(int rank, float dropout)
    {
        if (rank < 1) throw new ArgumentException($"LoRA rank must be ≥ 1, got {rank}");
        if (!(dropout >= 0 && dropout < 1)) throw new ArgumentException($"lora_dropout must be in [0, 1), got {dropout}");
    }

    /// <summary>Arena entries of one module: A [r, in], B [out, r], DoRA's magnitude [out], named as the checkpoints name them.</summary>
    internal static (string Name, int[] Shape) EntryA(string target, int inFeatures, int rank) => ($"{target}.lora_A", new[] { rank, inFeatures });
    internal static (string Name, int[] Shape) EntryB(string target, int outFeatures, int rank) => ($"{target}.lora_B", new[] { outFeatures, rank });
    internal static (string Name, int[] Shape) EntryMagnitude(string target, int outFeatures) => ($"{target}.lora_magnitude_vector", new[] { outFeatures });

    private static ParameterArena OwnArena(ComputeDevice device, string target, int inFeatures, int outFeatures, int rank, float dropout, DType computeDType, bool dora)
    {
        Validate(rank, dropout);
        var entries = new List<(string, int[])> { EntryA(target, inFeatures, rank), EntryB(target, outFeatures, rank) };
        if (dora) entries.Add(EntryMagnitude(target, outFeatures));
        return new ParameterArena(device, device.Kernels, computeDType, entries);
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

    /// <summary>Frees the arena when the module owns it; an adapter's modules are views of the adapter's arena.</summary>
    public void Dispose()
    {
        if (_ownsArena) Arena.Dispose();
    }
}
