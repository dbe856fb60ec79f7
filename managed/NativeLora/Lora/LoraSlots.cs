using NativeLora.Model;
using NativeLora.Tensors;

namespace NativeLora.Lora;

/// <summary>
/// The served adapters of one linear: banks A [S·rMax, in] and B [S·out, rMax] in the compute dtype
/// (slot s owns rows s·rMax.. of A and s·out.. of B, zero beyond the adapter's rank), one f32 scale
/// and one I32 rank per slot, both 0 where the slot's adapter does not touch this linear (kernels:
/// MultiLora.cs). HostRanks mirrors the ranks so a batch that touches no slot here skips the kernels.
/// </summary>
public sealed class LinearLoraSlots : IDisposable
{
    public Tensor A { get; }
    public Tensor B { get; }
    public Tensor Scales { get; }
    public Tensor Ranks { get; }
    public int MaxRank { get; }
    internal readonly float[] HostScales;
    internal readonly int[] HostRanks;

    internal LinearLoraSlots(Devices.ComputeDevice device, DType dtype, int slots, int maxRank, int inFeatures, int outFeatures)
    {
        MaxRank = maxRank;
        A = device.Allocate(dtype, slots * maxRank, inFeatures);
        B = device.Allocate(dtype, slots * outFeatures, maxRank);
        Scales = device.Allocate(DType.F32, slots);
        Ranks = device.Allocate(DType.I32, slots);
        A.FillBytes(0);
        B.FillBytes(0);
        HostScales = new float[slots];
        HostRanks = new int[slots];
        Upload();
    }

    /// <summary>Whether any of these row slots (−1: none) has an adapter on this linear.</summary>
    public bool Touches(ReadOnlySpan<int> rowSlots)
    {
        foreach (var s in rowSlots)
            if (s >= 0 && HostRanks[s] > 0) return true;
        return false;
    }

    internal void Upload()
    {
        Scales.CopyFrom<float>(HostScales);
        Ranks.CopyFrom<int>(HostRanks);
    }

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        Scales.Dispose();
        Ranks.Dispose();
    }
}

/// <summary>
/// Each row's served-adapter slot (−1: none): on the device for the kernels, on the host so that a
/// linear no row's adapter touches skips them.
/// </summary>
public sealed class AdapterRows : IDisposable
{
    public Tensor Slots { get; }
    public int[] Host { get; }

    public AdapterRows(Devices.ComputeDevice device, int[] slots)
    {
        Host = slots;
        Slots = device.Allocate(DType.I32, slots.Length);
        Slots.CopyFrom<int>(slots);
    }

    public void Dispose() => Slots.Dispose();
}

/// <summary>
/// Adapters served side by side on one base model (vLLM's multi-LoRA): a fixed number of slots of a
/// fixed maximum rank on every projection, filled from PEFT adapter directories and emptied without
/// touching the base. A request names an adapter; its rows carry the slot index into the batched
/// LoRA kernels, so requests for different adapters share one batch. A slot whose adapter is
/// unloaded keeps its weights until the last running request that uses it lets go (reference
/// counts), so unloading never changes a response in flight. Not thread-safe: one owner (the
/// serving engine's loop) calls everything.
/// </summary>
public sealed class LoraSlots : IDisposable
{
    private readonly CausalLm _model;
    private readonly List<LinearLoraSlots> _banks = new();
    private readonly Dictionary<string, int> _byName = new(StringComparer.Ordinal);
    private readonly int[] _refs;
    private readonly bool[] _loaded;

    public int Capacity { get; }
    public int MaxRank { get; }
    public IReadOnlyCollection<string> Names => _byName.Keys;

    public LoraSlots(CausalLm model, int capacity, int maxRank)
    {
        if (capacity < 1) throw new ArgumentException($"the number of adapter slots must be ≥ 1, got {capacity}");
        if (maxRank < 1) throw new ArgumentException($"the maximum adapter rank must be ≥ 1, got {maxRank}");
        _model = model;
        Capacity = capacity;
        MaxRank = maxRank;
        _refs = new int[capacity];
        _loaded = new bool[capacity];
        try
        {
            foreach (var lin in model.Layers.SelectMany(l => l.Linears))
            {
                if (lin.ServedAdapters != null) throw new InvalidOperationException($"{lin.Name} already serves adapters");
                var bank = new LinearLoraSlots(model.Device, model.DType, capacity, maxRank, lin.InFeatures, lin.OutFeatures);
                _banks.Add(bank);
                lin.ServedAdapters = bank;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public const int MaxNameLength = 128;

    /// <summary>
    /// Adapter names are model ids in requests, metrics labels and log lines: 1 to 128 characters of ASCII
    /// letters, digits and . _ - : + , starting with a letter or digit (no path separators, spaces or control characters).
    /// </summary>
    public static void CheckName(string name)
    {
        if (string.IsNullOrEmpty(name)) throw new ArgumentException("an adapter needs a name");
        if (name.Length > MaxNameLength) throw new ArgumentException($"adapter name is {name.Length} characters, over the {MaxNameLength}-character limit");
        int bad = name.AsSpan().IndexOfAnyExcept("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:+");
        if (bad >= 0) throw new ArgumentException($"adapter name has {(char.IsControl(name[bad]) ? $"control character U+{(int)name[bad]:X4}" : $"'{name[bad]}'")} at position {bad + 1}; names use ASCII letters, digits and . _ - : +");
        if (!char.IsAsciiLetterOrDigit(name[0])) throw new ArgumentException($"adapter name '{name}' must start with a letter or digit");
    }

    /// <summary>Slots holding weights: loaded adapters, and unloaded ones that running requests still use.</summary>
    public int InUse => Enumerable.Range(0, Capacity).Count(s => _loaded[s] || _refs[s] > 0);

    /// <summary>
    /// Loads the PEFT adapter in dir under name into a free slot. Plain LoRA and rsLoRA only: DoRA
    /// and modules_to_save change more than a low-rank product (merge them instead).
    /// </summary>
    public void Load(string name, string dir)
    {
        CheckName(name);
        if (_byName.ContainsKey(name)) throw new InvalidOperationException($"an adapter named '{name}' is already loaded");
        int slot = Enumerable.Range(0, Capacity).FirstOrDefault(s => !_loaded[s] && _refs[s] == 0, -1);
        int draining = Enumerable.Range(0, Capacity).Count(s => !_loaded[s] && _refs[s] > 0);
        if (slot < 0 && draining > 0)
            throw new InvalidOperationException($"all {Capacity} adapter slots are taken: {_byName.Count} by loaded adapters and {draining} by unloaded ones that running requests still use; such a slot frees when those requests finish, so retry then (or unload another adapter)");
        if (slot < 0) throw new InvalidOperationException($"all {Capacity} adapter slots are in use; unload one first (or start the server with more --max-loras)");
        using var file = PeftAdapterFile.Open(dir, _model.Config);
        var cfg = file.Config;
        if (cfg.UseDora) throw new NotSupportedException($"{dir}: DoRA adapters cannot be served side by side; merge it into the base with `nativelora merge` and serve the result");
        if (cfg.ModulesToSave.Length > 0) throw new NotSupportedException($"{dir}: adapters with modules_to_save ({string.Join(", ", cfg.ModulesToSave)}) cannot be served side by side; merge it instead");
        if (cfg.R > MaxRank) throw new NotSupportedException($"{dir}: rank {cfg.R} exceeds the server's maximum adapter rank {MaxRank} (start it with a larger --max-lora-rank)");
        var adapted = file.AdaptedTargets.Select(t => t.Name).ToHashSet();
        foreach (var lin in _model.Layers.SelectMany(l => l.Linears))
        {
            var bank = lin.ServedAdapters!;
            bool here = adapted.Contains(lin.Name);
            if (here)
            {
                bank.A.Slice(slot * MaxRank, MaxRank).CopyFromFloats(Pad(file.ReadA(lin.Name), cfg.R, lin.InFeatures, MaxRank, lin.InFeatures));
                bank.B.Slice(slot * lin.OutFeatures, lin.OutFeatures).CopyFromFloats(Pad(file.ReadB(lin.Name), lin.OutFeatures, cfg.R, lin.OutFeatures, MaxRank));
            }
            bank.HostScales[slot] = here ? cfg.Scale : 0f;
            bank.HostRanks[slot] = here ? cfg.R : 0;
            bank.Upload();
        }
        _loaded[slot] = true;
        _byName[name] = slot;
    }

    /// <summary>Forgets the adapter; its slot is reused once no running request holds it.</summary>
    public void Unload(string name)
    {
        if (!_byName.Remove(name, out int slot)) throw new KeyNotFoundException($"no adapter named '{name}' is loaded");
        _loaded[slot] = false;
    }

    /// <summary>The slot of a loaded adapter, held until <see cref="Release"/>.</summary>
    public int Acquire(string name)
    {
        if (!_byName.TryGetValue(name, out int slot)) throw new KeyNotFoundException($"no adapter named '{name}' is loaded");
        _refs[slot]++;
        return slot;
    }

    public void Release(int slot)
    {
        if (slot < 0) return;
        if (_refs[slot] <= 0) throw new InvalidOperationException($"adapter slot {slot} released more often than acquired");
        _refs[slot]--;
    }

    // rows×cols row-major into a zeroed paddedRows×paddedCols
    private static float[] Pad(float[] src, int rows, int cols, int paddedRows, int paddedCols)
    {
        var dst = new float[paddedRows * paddedCols];
        for (int r = 0; r < rows; r++) Array.Copy(src, r * cols, dst, r * paddedCols, cols);
        return dst;
    }

    public void Dispose()
    {
        foreach (var lin in _model.Layers.SelectMany(l => l.Linears))
            if (_banks.Contains(lin.ServedAdapters!)) lin.ServedAdapters = null;
        foreach (var b in _banks) b.Dispose();
        _banks.Clear();
    }
}
