using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.IO;
using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Training;

namespace NativeLora.Lora;

/// <summary>
/// A set of LoRA modules attached to a model's linear layers, saved and loaded exactly as HF PEFT
/// does (adapter_config.json + adapter_model.safetensors with PEFT's key names), so PEFT, vLLM and
/// llama.cpp's converter read our adapters and we read theirs. The base stays frozen and is never copied.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    public const string ConfigFileName = PeftAdapterFile.ConfigFileName;
    public const string WeightsFileName = PeftAdapterFile.WeightsFileName;

    public LoraConfig Config { get; }
    public IReadOnlyList<LoraModule> Modules => _modules;
    public IReadOnlyList<SavedModule> SavedModules => _saved;
    private readonly List<LoraModule> _modules = new();
    private readonly List<SavedModule> _saved = new();
    private CausalLm? _model;
    private readonly List<Linear> _targets = new();
    private ParameterArena? _arena;

    private LoraAdapter(LoraConfig config) => Config = config;

    public long TrainableParameters => _modules.Sum(m => m.ParameterCount) + _saved.Sum(m => m.Master.ElementCount);

    /// <summary>
    /// Every trainable tensor, by arena: the modules' A, B and magnitudes in one, each modules_to_save copy in its own.
    /// The optimizer works arena by arena (one launch per arena, not per tensor).
    /// </summary>
    public IEnumerable<ParameterArena> Arenas => (_arena == null ? Array.Empty<ParameterArena>() : new[] { _arena }).Concat(_saved.Select(m => m.Arena));

    /// <summary>Every trainable tensor with its gradient (checkpoint keys).</summary>
    public IEnumerable<(string Name, Tensor Value, Tensor Grad)> Trainables() => Arenas.SelectMany(a => a.Trainables());

    /// <summary>Refreshes every compute-dtype copy after an optimizer step: one cast per arena.</summary>
    public void SyncCompute(NativeLora.Kernels.KernelSet k)
    {
        foreach (var a in Arenas) a.SyncCompute(k);
    }

    private void AddSaved(CausalLm model)
    {
        _model = model;
        foreach (var name in Config.ModulesToSave)
        {
            if (model.Config.TieWordEmbeddings)
                throw new NotSupportedException("modules_to_save on a model with tied embeddings is not supported (the embedding and lm_head are one tensor)");
            var baseWeight = model.Parameters[PeftAdapterFile.SavedParameter(name)];
            var m = new SavedModule(model.Device, model.Kernels, name, baseWeight);
            _saved.Add(m);
            model.UseTrainableCopy(name, m.Compute, m.Grad);
        }
    }

    /// <summary>Trainable parameters for a model config, from the shapes alone (for --dry-run).</summary>
    public static long CountTrainable(ModelConfig c, LoraConfig l) =>
        PeftAdapterFile.Targets(c, l).Sum(t => (long)l.R * (t.InFeatures + t.OutFeatures) + (l.UseDora ? t.OutFeatures : 0))
        + l.ModulesToSave.Length * (long)c.VocabSize * c.HiddenSize;

    /// <summary>The model's linear layers the config adapts (the same list the adapter file reader checks).</summary>
    private static IEnumerable<Linear> Targets(CausalLm model, LoraConfig config)
    {
        var byName = model.Layers.SelectMany(layer => layer.Linears).ToDictionary(lin => lin.Name);
        return PeftAdapterFile.Targets(model.Config, config).Select(t => byName[t.Name]);
    }

    /// <summary>Creates fresh adapters (PEFT's init, seeded) on every target projection of the model.</summary>
    public static LoraAdapter Attach(CausalLm model, LoraConfig config, int seed)
    {
        config.Validate();
        var adapter = new LoraAdapter(config);
        try
        {
            adapter.Initialize(model, seed);
            return adapter;
        }
        catch
        {
            adapter.Dispose(); // detaches whatever was attached
            throw;
        }
    }

    private void Initialize(CausalLm model, int seed)
    {
        var rng = new Random(seed);
        foreach (var (lin, m) in AddModules(model))
        {
            LoraOp.InitializeLikePeft(m, rng);
            if (m.IsDora)
            {
                using var w0 = lin.AcquireWeight(model.Kernels);
                DoraOp.InitializeMagnitude(model.Kernels, m, w0.Tensor);
            }
        }
        _arena!.SyncCompute(model.Kernels);
        AddSaved(model);
    }

    /// <summary>
    /// One module on every target projection, all in one arena laid out as every A (in the model's order: q, k, v, o,
    /// gate, up, down per layer), then every B, then DoRA's magnitudes: the A's of q, k and v, which read the same
    /// input, lie back to back, and a layer's big tensors come before the small ones the 8-bit optimizer keeps in f32.
    /// </summary>
    private List<(Linear Lin, LoraModule Module)> AddModules(CausalLm model)
    {
        _model = model;
        var targets = Targets(model, Config).ToList();
        if (targets.Count == 0) throw new ArgumentException("no projection of the model matches target_modules");
        foreach (var lin in targets)
            if (lin.Lora != null) throw new InvalidOperationException($"{lin.Name} already has an adapter");
        LoraModule.Validate(Config.R, (float)Config.Dropout);
        var entries = targets.Select(l => LoraModule.EntryA(l.Name, l.InFeatures, Config.R))
            .Concat(targets.Select(l => LoraModule.EntryB(l.Name, l.OutFeatures, Config.R)))
            .Concat(Config.UseDora ? targets.Select(l => LoraModule.EntryMagnitude(l.Name, l.OutFeatures)) : []);
        _arena = new ParameterArena(model.Device, model.Kernels, model.DType, entries);
        var added = new List<(Linear, LoraModule)>();
        for (int i = 0; i < targets.Count; i++)
        {
            var lin = targets[i];
            var m = new LoraModule(lin.Name, Config.R, Config.Scale, (float)Config.Dropout, _arena, i, targets.Count + i, Config.UseDora ? 2 * targets.Count + i : -1);
            lin.Lora = m;
            _modules.Add(m);
            _targets.Add(lin);
            added.Add((lin, m));
        }
        return added;
    }

    /// <summary>Writes adapter_config.json (sorted keys, indent 2) and adapter_model.safetensors ({"format":"pt"}), f32.</summary>
    public void Save(string dir, string? baseModelNameOrPath = null)
    {
        Directory.CreateDirectory(dir);
        var writer = new SafeTensorsWriter();
        writer.SetMetadata("format", "pt");
        foreach (var m in _modules)
        {
            Add(writer, PeftAdapterFile.KeyA(m.Target), m.A);
            Add(writer, PeftAdapterFile.KeyB(m.Target), m.B);
            if (m.Magnitude != null) Add(writer, PeftAdapterFile.KeyMagnitude(m.Target), m.Magnitude);
        }
        foreach (var m in _saved) Add(writer, PeftAdapterFile.KeySaved(m.Module), m.Master);
        writer.Write(Path.Combine(dir, WeightsFileName));
        var json = (Config with { BaseModelNameOrPath = baseModelNameOrPath ?? Config.BaseModelNameOrPath }).ToPeftJson();
        AtomicFile.Write(Path.Combine(dir, ConfigFileName), s => s.Write(Encoding.UTF8.GetBytes(SortedJson(json))));
    }

    private static void Add(SafeTensorsWriter w, string key, Tensor t) =>
        w.Add(key, SafeTensorsDType.F32, t.Shape.Select(d => (long)d).ToArray(), ModelDirectory.Encode(t.ToArray<float>(), DType.F32));

    /// <summary>JSON with keys sorted at every level and two-space indents, as Python's json.dumps(indent=2, sort_keys=True).</summary>
    public static string SortedJson(JsonNode? node)
    {
        static JsonNode? Sort(JsonNode? n) => n switch
        {
            JsonObject o => new JsonObject(o.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, Sort(p.Value?.DeepClone())))),
            JsonArray a => new JsonArray(a.Select(x => Sort(x?.DeepClone())).ToArray()),
            _ => n?.DeepClone(),
        };
        return Sort(node)!.ToJsonString(new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 });
    }

    /// <summary>Loads a PEFT adapter directory onto the model (<see cref="PeftAdapterFile"/> checks every tensor first and names each problem).</summary>
    public static LoraAdapter Load(CausalLm model, string dir)
    {
        using var file = PeftAdapterFile.Open(dir, model.Config);
        var adapter = new LoraAdapter(file.Config);
        try
        {
            adapter.AddModules(model);
            adapter.AddSaved(model);
            adapter.CopyWeightsFrom(file);
            return adapter;
        }
        catch
        {
            adapter.Dispose();
            throw;
        }
    }

    /// <summary>Overwrites this adapter's weights with those of a saved adapter of the same configuration (checkpoint resume).</summary>
    public void LoadWeights(string dir)
    {
        using var file = PeftAdapterFile.Open(dir, _model!.Config);
        if (file.Config.R != Config.R || file.Config.UseDora != Config.UseDora || !file.Config.TargetModules.ToHashSet().SetEquals(Config.TargetModules)
            || !file.Config.ModulesToSave.ToHashSet().SetEquals(Config.ModulesToSave))
            throw new InvalidDataException($"{file.WeightsPath}: the saved adapter (r {file.Config.R}, {string.Join("/", file.Config.TargetModules)}) is not the one being trained (r {Config.R}, {string.Join("/", Config.TargetModules)})");
        CopyWeightsFrom(file);
    }

    private void CopyWeightsFrom(PeftAdapterFile file)
    {
        foreach (var m in _modules)
        {
            m.A.CopyFromFloats(file.ReadA(m.Target));
            m.B.CopyFromFloats(file.ReadB(m.Target));
            if (m.Magnitude != null) m.Magnitude.CopyFromFloats(file.ReadMagnitude(m.Target));
        }
        foreach (var m in _saved) m.Master.CopyFromFloats(file.ReadSavedParameter(m.ParameterName)!);
        SyncCompute(_model!.Kernels);
    }

    public void SetTraining(bool training)
    {
        foreach (var m in _modules) m.Training = training;
    }

    /// <summary>Removes the adapters from the model's layers and frees them.</summary>
    public void Dispose()
    {
        foreach (var lin in _targets) lin.Lora = null;
        _arena?.Dispose();
        _arena = null;
        foreach (var m in _saved)
        {
            _model?.UseTrainableCopy(m.Module, null, null);
            m.Dispose();
        }
        _saved.Clear();
        _modules.Clear();
        _targets.Clear();
    }
}
