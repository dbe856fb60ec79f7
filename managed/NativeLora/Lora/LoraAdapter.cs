using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.IO;
using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Lora;

/// <summary>
/// A set of LoRA modules attached to a model's linear layers, saved and loaded exactly as HF PEFT
/// does (adapter_config.json + adapter_model.safetensors with PEFT's key names), so PEFT, vLLM and
/// llama.cpp's converter read our adapters and we read theirs. The base stays frozen and is never copied.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";

    public LoraConfig Config { get; }
    public IReadOnlyList<LoraModule> Modules => _modules;
    public IReadOnlyList<SavedModule> SavedModules => _saved;
    private readonly List<LoraModule> _modules = new();
    private readonly List<SavedModule> _saved = new();
    private CausalLm? _model;
    private readonly List<Linear> _targets = new();

    private NativeLora.Kernels.KernelSet? _kernels;

    private LoraAdapter(LoraConfig config) => Config = config;

    public long TrainableParameters => _modules.Sum(m => m.ParameterCount) + _saved.Sum(m => m.Master.ElementCount);

    /// <summary>Every trainable tensor with its gradient, in a fixed order (optimizer state and checkpoints rely on it).</summary>
    public IEnumerable<(string Name, Tensor Value, Tensor Grad)> Trainables() =>
        _modules.SelectMany(m => m.Trainables().Select(t => ($"{m.Target}.{t.Name}", t.Value, t.Grad)))
            .Concat(_saved.Select(m => (m.ParameterName, m.Master, m.Grad)));

    /// <summary>Refreshes every compute-dtype copy after an optimizer step.</summary>
    public void SyncCompute(NativeLora.Kernels.KernelSet k)
    {
        foreach (var m in _modules) m.SyncCompute(k);
        foreach (var m in _saved) m.SyncCompute(k);
    }

    private void AddSaved(CausalLm model)
    {
        _model = model;
        foreach (var name in Config.ModulesToSave)
        {
            if (model.Config.TieWordEmbeddings)
                throw new NotSupportedException("modules_to_save on a model with tied embeddings is not supported (the embedding and lm_head are one tensor)");
            var baseWeight = model.Parameters[name == "embed_tokens" ? "model.embed_tokens.weight" : "lm_head.weight"];
            var m = new SavedModule(model.Device, model.Kernels, name, baseWeight);
            _saved.Add(m);
            model.UseTrainableCopy(name, m.Compute, m.Grad);
        }
    }

    /// <summary>Trainable parameters for a model config, from the shapes alone (for --dry-run).</summary>
    public static long CountTrainable(ModelConfig c, LoraConfig l)
    {
        long perLayer = 0;
        foreach (var t in l.TargetModules)
        {
            var (inF, outF) = t switch
            {
                "q_proj" => (c.HiddenSize, c.QDim),
                "k_proj" or "v_proj" => (c.HiddenSize, c.KvDim),
                "o_proj" => (c.QDim, c.HiddenSize),
                "gate_proj" or "up_proj" => (c.HiddenSize, c.IntermediateSize),
                "down_proj" => (c.IntermediateSize, c.HiddenSize),
                _ => throw new ArgumentException($"unknown target module '{t}'"),
            };
            perLayer += (long)l.R * (inF + outF) + (l.UseDora ? outF : 0);
        }
        return perLayer * c.NumLayers + l.ModulesToSave.Length * (long)c.VocabSize * c.HiddenSize;
    }

    private static IEnumerable<Linear> Targets(CausalLm model, LoraConfig config) =>
        model.Layers.SelectMany(layer => layer.Linears).Where(lin => config.TargetModules.Contains(lin.Name[(lin.Name.LastIndexOf('.') + 1)..]));

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
        var adapter = this;
        var config = Config;
        var rng = new Random(seed);
        foreach (var lin in Targets(model, config))
        {
            var m = adapter.Add(model, lin);
            m.InitializeLikePeft(rng);
            if (m.IsDora) // magnitude starts at ‖W0‖ per output row (B = 0)
            {
                using var w0 = lin.AcquireWeight(model.Kernels);
                using var norms = LoraOp.BaseRowNorms(model.Kernels, w0.Tensor);
                norms.CopyTo(m.Magnitude!);
            }
            m.SyncCompute(model.Kernels);
        }
        if (adapter._modules.Count == 0) throw new ArgumentException("no projection of the model matches target_modules");
        adapter.AddSaved(model);
    }

    private LoraModule Add(CausalLm model, Linear lin)
    {
        if (lin.Lora != null) throw new InvalidOperationException($"{lin.Name} already has an adapter");
        _kernels = model.Kernels;
        var m = new LoraModule(model.Device, lin.Name, lin.InFeatures, lin.OutFeatures, Config.R, Config.Scale, (float)Config.Dropout, model.DType, Config.UseDora);
        lin.Lora = m;
        _modules.Add(m);
        _targets.Add(lin);
        return m;
    }

    public static string KeyA(string target) => $"base_model.model.{target}.lora_A.weight";
    public static string KeyB(string target) => $"base_model.model.{target}.lora_B.weight";
    public static string KeyMagnitude(string target) => $"base_model.model.{target}.lora_magnitude_vector";

    /// <summary>Writes adapter_config.json (sorted keys, indent 2) and adapter_model.safetensors ({"format":"pt"}), f32.</summary>
    public void Save(string dir, string? baseModelNameOrPath = null)
    {
        Directory.CreateDirectory(dir);
        var writer = new SafeTensorsWriter();
        writer.SetMetadata("format", "pt");
        foreach (var m in _modules)
        {
            Add(writer, KeyA(m.Target), m.A);
            Add(writer, KeyB(m.Target), m.B);
            if (m.Magnitude != null) Add(writer, KeyMagnitude(m.Target), m.Magnitude);
        }
        foreach (var m in _saved) Add(writer, m.Key, m.Master);
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

    /// <summary>Loads a PEFT adapter directory onto the model; every missing, extra or misshapen tensor is reported by name.</summary>
    public static LoraAdapter Load(CausalLm model, string dir)
    {
        dir = Hub.ModelSource.Resolve(dir);
        var cfgPath = Path.Combine(dir, ConfigFileName);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{dir}: no {ConfigFileName} (expected a PEFT adapter directory)", cfgPath);
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(cfgPath)) as JsonObject ?? throw new InvalidDataException($"{cfgPath}: the top level must be an object"); }
        catch (JsonException e) { throw new InvalidDataException($"{cfgPath}: not valid JSON ({e.Message})", e); }
        var config = LoraConfig.FromPeftJson(json, cfgPath);
        var weightsPath = Path.Combine(dir, WeightsFileName);
        if (!File.Exists(weightsPath)) throw new FileNotFoundException($"{dir}: no {WeightsFileName}", weightsPath);
        using var file = SafeTensorsFile.Open(weightsPath);

        var expected = new List<(string Key, string Target, string Kind, int[] Shape)>();
        foreach (var lin in Targets(model, config))
        {
            expected.Add((KeyA(lin.Name), lin.Name, "A", new[] { config.R, lin.InFeatures }));
            expected.Add((KeyB(lin.Name), lin.Name, "B", new[] { lin.OutFeatures, config.R }));
            if (config.UseDora) expected.Add((KeyMagnitude(lin.Name), lin.Name, "m", new[] { lin.OutFeatures }));
        }
        // PEFT may include the adapter name (".default") in keys saved by some versions; accept both
        string Resolve(string key) => file.Contains(key) ? key : key.Replace(".weight", ".default.weight");
        var problems = new List<string>();
        foreach (var (key, _, _, shape) in expected)
        {
            var k = Resolve(key);
            if (!file.TryGet(k, out var info)) problems.Add($"missing tensor '{key}'");
            else if (!info.Shape.Select(d => (int)d).SequenceEqual(shape) || info.Shape.Length != shape.Length)
                problems.Add($"tensor '{key}' has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
            else if (info.DType is not (SafeTensorsDType.F32 or SafeTensorsDType.BF16 or SafeTensorsDType.F16))
                problems.Add($"tensor '{key}' has dtype {info.DType}");
        }
        foreach (var name in config.ModulesToSave)
        {
            var key = $"base_model.model.{(name == "embed_tokens" ? "model.embed_tokens.weight" : "lm_head.weight")}";
            var shape = new[] { model.Config.VocabSize, model.Config.HiddenSize };
            if (!file.TryGet(key, out var info)) problems.Add($"missing tensor '{key}' (modules_to_save)");
            else if (info.ElementCount != (long)shape[0] * shape[1]) problems.Add($"tensor '{key}' has shape [{string.Join(", ", info.Shape)}], expected [{shape[0]}, {shape[1]}]");
            expected.Add((key, name, "saved", shape));
        }
        var known = expected.Select(e => Resolve(e.Key)).ToHashSet();
        foreach (var extra in file.Tensors.Select(t => t.Name).Where(n => !known.Contains(n)).OrderBy(n => n))
            problems.Add($"unexpected tensor '{extra}' (not a {string.Join("/", config.TargetModules)} adapter of this model)");
        if (problems.Count > 0)
            throw new InvalidDataException($"{weightsPath}: the adapter does not fit this model ({problems.Count} problem(s)):\n  " + string.Join("\n  ", problems));

        var adapter = new LoraAdapter(config);
        try
        {
            foreach (var lin in Targets(model, config))
            {
                var m = adapter.Add(model, lin);
                m.A.CopyFromFloats(file.ReadAsFloat32(Resolve(KeyA(lin.Name))));
                m.B.CopyFromFloats(file.ReadAsFloat32(Resolve(KeyB(lin.Name))));
                if (m.Magnitude != null) m.Magnitude.CopyFromFloats(file.ReadAsFloat32(KeyMagnitude(lin.Name)));
                m.SyncCompute(model.Kernels);
            }
            adapter.AddSaved(model);
            foreach (var m in adapter._saved)
            {
                m.Master.CopyFromFloats(file.ReadAsFloat32(m.Key));
                m.SyncCompute(model.Kernels);
            }
            return adapter;
        }
        catch
        {
            adapter.Dispose();
            throw;
        }
    }

    /// <summary>Overwrites this adapter's weights with those of a saved adapter of the same shape (checkpoint resume).</summary>
    public void LoadWeights(string dir)
    {
        var path = Path.Combine(dir, WeightsFileName);
        using var file = SafeTensorsFile.Open(path);
        foreach (var m in _saved)
        {
            if (!file.TryGet(m.Key, out var info) || info.DType != SafeTensorsDType.F32 || info.ElementCount != m.Master.ElementCount)
                throw new InvalidDataException($"{path}: tensor '{m.Key}' is missing or not F32 with {m.Master.ElementCount} values");
            m.Master.CopyFromBytes(file.GetBytes(m.Key));
            m.SyncCompute(_kernels!);
        }
        foreach (var m in _modules)
            foreach (var (name, value, _) in m.Trainables())
            {
                var key = name == "lora_magnitude_vector" ? KeyMagnitude(m.Target) : $"base_model.model.{m.Target}.{name}.weight";
                if (!file.TryGet(key, out var info)) throw new InvalidDataException($"{path}: tensor '{key}' is missing");
                if (info.DType != SafeTensorsDType.F32 || info.ElementCount != value.ElementCount)
                    throw new InvalidDataException($"{path}: tensor '{key}' is {info}, expected F32 with {value.ElementCount} values");
                value.CopyFromBytes(file.GetBytes(key));
            }
        foreach (var lin in _targets) lin.Lora!.SyncCompute(_kernels!);
    }

    public void SetTraining(bool training)
    {
        foreach (var m in _modules) m.Training = training;
    }

    /// <summary>Removes the adapters from the model's layers and frees them.</summary>
    public void Dispose()
    {
        foreach (var lin in _targets) lin.Lora = null;
        foreach (var m in _modules) m.Dispose();
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
