using System.Text.Json.Nodes;
using NativeLora.SafeTensors;

namespace NativeLora.Quantization;

/// <summary>
/// A GPTQ or AWQ checkpoint's <c>quantization_config</c> (config.json), and reading its linears back as dense weights:
/// <c>generate</c>, <c>eval</c>, <c>serve</c> and <c>merge</c> dequantize them on load (we have no
/// GPTQ/AWQ matmul kernels; the dense f32/bf16 model is what runs).
/// </summary>
public sealed record QuantizedCheckpoint(string Method, int Bits, int GroupSize, bool Sym, bool DescAct)
{
    public static JsonObject ConfigJson(PtqOptions o) => o.GptqFormat
        ? new JsonObject
        {
            ["quant_method"] = "gptq", ["bits"] = o.Gptq.Bits, ["group_size"] = o.Gptq.GroupSize, ["desc_act"] = o.Gptq.DescAct,
            ["sym"] = o.Gptq.Sym, ["damp_percent"] = o.Gptq.DampPercent, ["true_sequential"] = true, ["static_groups"] = false,
            ["checkpoint_format"] = "gptq", ["model_file_base_name"] = "model",
        }
        : new JsonObject
        {
            ["quant_method"] = "awq", ["bits"] = 4, ["group_size"] = o.AwqGroupSize, ["zero_point"] = true, ["version"] = "gemm",
            ["modules_to_not_convert"] = null,
        };

    /// <summary>The checkpoint's quantization, or null when config.json has no quantization_config (or a method other than gptq/awq).</summary>
    public static QuantizedCheckpoint? Read(string modelDir)
    {
        var path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path)) return null;
        JsonObject? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject; }
        catch (System.Text.Json.JsonException) { return null; } // ModelConfig.Load reports it
        if (root?["quantization_config"] is not JsonObject q) return null;
        string? method = (string?)q["quant_method"];
        if (method is not ("gptq" or "awq")) return null;
        int Int(string key, int? fallback)
        {
            var v = q[key];
            if (v is null && fallback is int f) return f;
            try { return (int)v!; }
            catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
            { throw new InvalidDataException($"{path}: quantization_config.{key} must be an integer"); }
        }
        bool Bool(string key, bool fallback) => q[key] is JsonValue v && v.TryGetValue(out bool b) ? b : fallback;
        if (method == "gptq")
        {
            string format = (string?)q["checkpoint_format"] ?? "gptq";
            if (format != "gptq") throw new InvalidDataException($"{path}: GPTQ checkpoint_format '{format}' is not supported (only 'gptq', the zero − 1 layout)");
            var ck = new QuantizedCheckpoint("gptq", Int("bits", null), Int("group_size", null), Bool("sym", true), Bool("desc_act", false));
            if (ck.Bits is not (4 or 8)) throw new InvalidDataException($"{path}: GPTQ {ck.Bits}-bit is not supported (4 or 8)");
            return ck;
        }
        string version = ((string?)q["version"] ?? "gemm").ToLowerInvariant();
        if (version != "gemm") throw new InvalidDataException($"{path}: AWQ version '{version}' is not supported (only 'gemm')");
        var awq = new QuantizedCheckpoint("awq", Int("bits", 4), Int("group_size", null), false, false);
        if (awq.Bits != 4) throw new InvalidDataException($"{path}: AWQ {awq.Bits}-bit is not supported (4)");
        return awq;
    }

    public string Describe() => Method == "gptq"
        ? $"GPTQ {Bits}-bit, group size {GroupSize}{(Sym ? ", symmetric" : ", asymmetric")}{(DescAct ? ", act-order" : "")}"
        : $"AWQ {Bits}-bit GEMM, group size {GroupSize}";

    public string[] Suffixes => Method == "gptq" ? [".qweight", ".qzeros", ".scales", ".g_idx"] : [".qweight", ".qzeros", ".scales"];

    /// <summary>True when the weight "X.weight" is stored as X.qweight (and companions).</summary>
    public bool IsQuantized(ShardedSafeTensors files, string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) && files.Contains(weightName[..^".weight".Length] + ".qweight");

    public bool IsCompanion(ShardedSafeTensors files, string name)
    {
        foreach (var s in Suffixes)
            if (name.EndsWith(s, StringComparison.Ordinal) && files.Contains(name[..^s.Length] + ".qweight")) return true;
        return false;
    }

    /// <summary>The weight [out, in] as f32, unpacked and dequantized; every tensor's dtype and size are checked, by name.</summary>
    public float[] Dequantize(ShardedSafeTensors files, string weightName, int[] shape) => Unpack(files, weightName, shape).Dequantize();

    public QuantizedWeight Unpack(ShardedSafeTensors files, string weightName, int[] shape)
    {
        string m = weightName[..^".weight".Length];
        int outF = shape[0], inF = shape[1];
        int[] I32(string suffix, bool optional = false)
        {
            if (!files.TryGet(m + suffix, out var info))
            {
                if (optional) return null!;
                throw new InvalidDataException($"{Method.ToUpperInvariant()} checkpoint: missing tensor '{m + suffix}'");
            }
            if (info.DType != SafeTensorsDType.I32) throw new InvalidDataException($"tensor '{m + suffix}' in {Path.GetFileName(files.FileOf(m + suffix))} has dtype {info.DType}, expected I32");
            return files.GetSpan<int>(m + suffix).ToArray();
        }
        if (!files.TryGet(m + ".scales", out var si)) throw new InvalidDataException($"{Method.ToUpperInvariant()} checkpoint: missing tensor '{m}.scales'");
        if (si.DType != SafeTensorsDType.F16) throw new InvalidDataException($"tensor '{m}.scales' has dtype {si.DType}, expected F16");
        var scales = files.GetSpan<ushort>(m + ".scales").ToArray();
        try
        {
            return Method == "gptq"
                ? GptqFormat.Unpack(Bits, GroupSize, I32(".qweight"), I32(".qzeros"), scales, I32(".g_idx", optional: true), outF, inF, m)
                : AwqFormat.Unpack(GroupSize, I32(".qweight"), I32(".qzeros"), scales, outF, inF, m);
        }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
    }
}
