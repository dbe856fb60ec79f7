using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Model;
using NativeLora.SafeTensors;

namespace NativeLora.Lora;

/// <summary>
/// The one reader of HF PEFT adapter directories (adapter_config.json + adapter_model.safetensors) and
/// the owner of PEFT's tensor key names. Generation (<see cref="LoraAdapter.Load"/>), checkpoint resume,
/// merge and GGUF export all open adapters here, so they accept the same spellings, check the same
/// shapes and read the same values.
///
/// Keys, as PEFT's get_peft_model_state_dict writes them (and as we write them):
///   base_model.model.&lt;projection&gt;.lora_A.weight [r, in], .lora_B.weight [out, r],
///   .lora_magnitude_vector [out] (DoRA), base_model.model.&lt;parameter&gt; for modules_to_save.
/// Also accepted, because some PEFT versions and tools save the model's raw state dict, which keeps
/// the adapter name "default": lora_A.default.weight, lora_B.default.weight, lora_magnitude_vector
/// .default / .weight / .default.weight, and &lt;module&gt;.modules_to_save.default.weight.
/// Two spellings of one tensor in one file are an error, never a silent pick.
/// </summary>
public sealed class PeftAdapterFile : IDisposable
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    private const string Prefix = "base_model.model.";

    public static string KeyA(string target) => $"{Prefix}{target}.lora_A.weight";
    public static string KeyB(string target) => $"{Prefix}{target}.lora_B.weight";
    public static string KeyMagnitude(string target) => $"{Prefix}{target}.lora_magnitude_vector";
    public static string KeySaved(string module) => Prefix + SavedParameter(module);

    /// <summary>The base parameter a modules_to_save entry (embed_tokens, lm_head) replaces.</summary>
    public static string SavedParameter(string module) => module == "embed_tokens" ? "model.embed_tokens.weight" : "lm_head.weight";

    /// <summary>The canonical spelling of a key in an adapter file (the key itself when it is already canonical or unknown).</summary>
    public static string Canonical(string key)
    {
        var k = key.Replace(".modules_to_save.default.", ".").Replace(".lora_A.default.", ".lora_A.").Replace(".lora_B.default.", ".lora_B.");
        foreach (var suffix in new[] { ".lora_magnitude_vector.default.weight", ".lora_magnitude_vector.default", ".lora_magnitude_vector.weight" })
            if (k.EndsWith(suffix, StringComparison.Ordinal)) return k[..^suffix.Length] + ".lora_magnitude_vector";
        return k;
    }

    /// <summary>One adapted projection: its module name (model.layers.0.self_attn.q_proj) and shape.</summary>
    public readonly record struct Target(string Name, int OutFeatures, int InFeatures);

    /// <summary>The projections of a model an adapter config adapts, in the model's parameter order.</summary>
    public static List<Target> Targets(ModelConfig model, LoraConfig config) =>
        CausalLm.ExpectedParameters(model)
            .Where(p => CausalLm.IsProjectionWeight(p.Name))
            .Select(p => new Target(p.Name[..^".weight".Length], p.Shape[0], p.Shape[1]))
            .Where(t => config.TargetModules.Contains(t.Name[(t.Name.LastIndexOf('.') + 1)..]))
            .ToList();

    /// <summary>Reads and checks adapter_config.json of an adapter directory.</summary>
    public static LoraConfig ReadConfig(string dir)
    {
        dir = Hub.ModelSource.Resolve(dir); // a Hub id names an adapter too
        var cfgPath = Path.Combine(dir, ConfigFileName);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{dir}: no {ConfigFileName} (expected a PEFT adapter directory)", cfgPath);
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(cfgPath)) as JsonObject ?? throw new InvalidDataException($"{cfgPath}: the top level must be an object"); }
        catch (JsonException e) { throw new InvalidDataException($"{cfgPath}: not valid JSON ({e.Message})", e); }
        return LoraConfig.FromPeftJson(json, cfgPath);
    }

    public LoraConfig Config { get; }
    public string WeightsPath => _file.Path;
    /// <summary>The adapted projections, every one present in the file (checked at open).</summary>
    public IReadOnlyList<Target> AdaptedTargets { get; }

    private readonly SafeTensorsFile _file;
    private readonly Dictionary<string, string> _keys; // canonical key → key as spelled in the file

    private PeftAdapterFile(LoraConfig config, SafeTensorsFile file, Dictionary<string, string> keys, List<Target> targets)
    {
        Config = config; _file = file; _keys = keys; AdaptedTargets = targets;
    }

    /// <summary>
    /// Opens an adapter directory for a model: every missing, extra, misshapen or non-float tensor is
    /// reported by name in one exception, before anything is read.
    /// </summary>
    public static PeftAdapterFile Open(string dir, ModelConfig model)
    {
        dir = Hub.ModelSource.Resolve(dir);
        var config = ReadConfig(dir);
        if (config.ModulesToSave.Length > 0 && model.TieWordEmbeddings)
            throw new NotSupportedException($"{dir}: modules_to_save on a model with tied embeddings is not supported (the embedding and lm_head are one tensor)");
        var weightsPath = Path.Combine(dir, WeightsFileName);
        if (!File.Exists(weightsPath)) throw new FileNotFoundException($"{dir}: no {WeightsFileName}", weightsPath);
        var file = SafeTensorsFile.Open(weightsPath);
        try
        {
            var problems = new List<string>();
            var keys = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var t in file.Tensors)
            {
                var canonical = Canonical(t.Name);
                if (keys.TryGetValue(canonical, out var first)) problems.Add($"tensors '{first}' and '{t.Name}' are two spellings of '{canonical}'");
                else keys[canonical] = t.Name;
            }
            var expected = new List<(string Key, int[] Shape)>();
            var targets = Targets(model, config);
            foreach (var t in targets)
            {
                expected.Add((KeyA(t.Name), new[] { config.R, t.InFeatures }));
                expected.Add((KeyB(t.Name), new[] { t.OutFeatures, config.R }));
                if (config.UseDora) expected.Add((KeyMagnitude(t.Name), new[] { t.OutFeatures }));
            }
            foreach (var m in config.ModulesToSave) expected.Add((KeySaved(m), new[] { model.VocabSize, model.HiddenSize }));
            foreach (var (key, shape) in expected)
            {
                if (!keys.TryGetValue(key, out var name)) { problems.Add($"missing tensor '{key}'"); continue; }
                var info = file.Get(name);
                if (!info.Shape.Select(d => (long)d).SequenceEqual(shape.Select(d => (long)d)))
                    problems.Add($"tensor '{name}' has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
                else if (info.DType is not (SafeTensorsDType.F32 or SafeTensorsDType.BF16 or SafeTensorsDType.F16))
                    problems.Add($"tensor '{name}' has dtype {info.DType} (F32, BF16 or F16 expected)");
            }
            var known = expected.Select(e => e.Key).ToHashSet();
            foreach (var (canonical, name) in keys.Where(kv => !known.Contains(kv.Key)).OrderBy(kv => kv.Value, StringComparer.Ordinal))
                problems.Add($"unexpected tensor '{name}' (not a {string.Join("/", config.TargetModules)} adapter of this model)");
            if (problems.Count > 0)
                throw new InvalidDataException($"{weightsPath}: the adapter does not fit this {model.ModelType} model ({problems.Count} problem(s)):\n  " + string.Join("\n  ", problems));
            return new PeftAdapterFile(config, file, keys, targets);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public float[] ReadA(string target) => Read(KeyA(target));
    public float[] ReadB(string target) => Read(KeyB(target));
    public float[] ReadMagnitude(string target) => Read(KeyMagnitude(target));

    /// <summary>The trained copy of a model parameter (model.embed_tokens.weight, lm_head.weight), or null when the adapter does not save it.</summary>
    public float[]? ReadSavedParameter(string parameter) =>
        _keys.TryGetValue(Prefix + parameter, out var name) && Config.ModulesToSave.Any(m => SavedParameter(m) == parameter) ? _file.ReadAsFloat32(name) : null;

    private float[] Read(string canonicalKey) => _file.ReadAsFloat32(_keys[canonicalKey]);

    public void Dispose() => _file.Dispose();
}
