using System.Runtime.InteropServices;
using System.Text.Json;
using NativeLora.Devices;
using NativeLora.IO;
using NativeLora.Kernels;
using NativeLora.Quantization;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>
/// Reads and writes HF model directories: config.json plus model.safetensors or a sharded
/// model.safetensors.index.json. Loading checks every tensor's name, shape and dtype before any
/// device memory is allocated, then converts tensor by tensor from the memory map into the
/// compute dtype, so peak host memory stays near the largest single tensor.
/// </summary>
public static class ModelDirectory
{
    public const string ConfigFileName = "config.json";

    // Tensors some checkpoints carry that the computation does not use.
    private static bool IsIgnorable(string name, ModelConfig c) =>
        name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) ||
        (c.TieWordEmbeddings && name == "lm_head.weight");

    // The companions of a bitsandbytes 4-bit weight "X.weight" (HF's serialization of Params4bit).
    private static readonly string[] Bnb4BitSuffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", Nf4Tensor.QuantStateSuffix];

    /// <summary>True when name is stored as a bitsandbytes NF4 weight (a U8 tensor with a quant_state beside it).</summary>
    private static bool IsBnb4Bit(ShardedSafeTensors files, string name) =>
        files.TryGet(name + Nf4Tensor.QuantStateSuffix, out _) && files.TryGet(name, out var info) && info.DType == SafeTensorsDType.U8;

    private static bool IsBnb4BitCompanion(ShardedSafeTensors files, string name)
    {
        foreach (var suffix in Bnb4BitSuffixes)
            if (name.EndsWith(suffix, StringComparison.Ordinal) && IsBnb4Bit(files, name[..^suffix.Length])) return true;
        return false;
    }

    // A GPTQ/AWQ checkpoint's quantization_config, read once per opened checkpoint (null for a dense one).
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ShardedSafeTensors, QuantHolder> s_quant = new();
    private sealed record QuantHolder(QuantizedCheckpoint? Value);

    private static QuantizedCheckpoint? QuantOf(ShardedSafeTensors files) =>
        s_quant.GetValue(files, f => new QuantHolder(f.Shards.Count == 0 ? null : QuantizedCheckpoint.Read(Path.GetDirectoryName(Path.GetFullPath(f.Shards[0].Path))!))).Value;

    /// <summary>"GPTQ 4-bit, group size 128, symmetric" etc. when the directory holds a GPTQ/AWQ checkpoint (dequantized on load), else null.</summary>
    public static string? DescribeQuantization(string dir) => QuantizedCheckpoint.Read(dir)?.Describe();

    public static ModelConfig ReadConfig(string dir)
    {
        dir = Hub.ModelSource.Resolve(dir);
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory '{dir}' does not exist");
        var path = Path.Combine(dir, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{dir}: no {ConfigFileName} (expected a Hugging Face model directory)", path);
        return ModelConfig.Load(path);
    }

    /// <summary>
    /// Loads a model directory in <paramref name="computeDType"/>. With <paramref name="quantizeProjections"/> (QLoRA) each
    /// decoder projection weight is quantized to NF4 (double quantization, as <see cref="CausalLm.QuantizeLinears"/>) right
    /// after it is uploaded and its dense tensor freed at once, so at most one dense projection is alive besides the
    /// embeddings, norms and lm_head: the peak is near the 4-bit model's, not the dense model's. With
    /// <paramref name="embeddingOnHost"/> embed_tokens is read straight into host memory that kernels read in place
    /// (as <see cref="CausalLm.PlaceEmbeddingOnHost"/> leaves it), so it never takes device memory, not even while loading.
    /// </summary>
    public static CausalLm Load(ComputeDevice device, string dir, DType computeDType, bool quantizeProjections = false, bool embeddingOnHost = false)
    {
        if (!computeDType.IsFloat()) throw new ArgumentException($"compute dtype must be f32, bf16 or f16, got {computeDType.Name()}");
        dir = Hub.ModelSource.Resolve(dir);
        var config = ReadConfig(dir);
        using var files = ShardedSafeTensors.Open(dir);
        var expected = CausalLm.ExpectedParameters(config);
        CheckCheckpoint(files, config, dir);
        if (embeddingOnHost) CausalLm.CheckEmbeddingOnHost(config);

        var parameters = new Dictionary<string, Tensor>();
        var quantized = new Dictionary<string, Nf4Tensor>();
        try
        {
            foreach (var (name, shape) in expected)
            {
                if (quantizeProjections && CausalLm.IsProjectionWeight(name))
                {
                    using var dense = device.Allocate(computeDType, shape);
                    Upload(files, name, dense);
                    quantized[name] = Nf4Tensor.Quantize(device.Kernels, dense);
                    continue;
                }
                var t = embeddingOnHost && name == "model.embed_tokens.weight" ? device.AllocateHost(computeDType, shape) : device.Allocate(computeDType, shape);
                parameters[name] = t;
                Upload(files, name, t);
            }
            var model = new CausalLm(device, config, parameters, quantized);
            if (quantizeProjections) device.EmptyCache(); // the freed dense projections' segments go back to the device
            return model;
        }
        catch
        {
            foreach (var t in parameters.Values) t.Dispose(); // nothing half-loads
            foreach (var q in quantized.Values) q.Dispose();
            throw;
        }
    }

    /// <summary>Reports every missing, extra, misshapen or non-float tensor of a checkpoint at once.</summary>
    public static void CheckCheckpoint(ShardedSafeTensors files, ModelConfig config, string dir)
    {
        var expected = CausalLm.ExpectedParameters(config);
        var problems = new List<string>();
        var quant = QuantOf(files);
        foreach (var (name, shape) in expected)
        {
            if (quant != null && quant.IsQuantized(files, name)) continue; // its packed tensors are checked when it is unpacked
            if (!files.TryGet(name, out var info)) { problems.Add($"missing tensor '{name}' [{string.Join(", ", shape)}]"); continue; }
            if (IsBnb4Bit(files, name)) continue; // shape and dtype come from its quant_state, checked when it is read
            if (!info.Shape.Select(d => (int)d).SequenceEqual(shape) || info.Shape.Length != shape.Length)
                problems.Add($"tensor '{name}' in {Path.GetFileName(files.FileOf(name))} has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
            else if (info.DType is not (SafeTensorsDType.F32 or SafeTensorsDType.BF16 or SafeTensorsDType.F16))
                problems.Add($"tensor '{name}' has dtype {info.DType}, expected F32, BF16 or F16");
        }
        var names = expected.Select(e => e.Name).ToHashSet();
        foreach (var extra in files.Names.Where(n => !names.Contains(n) && !IsIgnorable(n, config) && !IsBnb4BitCompanion(files, n) && quant?.IsCompanion(files, n) != true).OrderBy(n => n))
            problems.Add($"unexpected tensor '{extra}' in {Path.GetFileName(files.FileOf(extra))}");
        if (problems.Count > 0)
            throw new InvalidDataException($"{dir}: the checkpoint does not match its {config.ModelType} config.json ({problems.Count} problem(s)):\n  " + string.Join("\n  ", problems));

    }

    // Same dtype: bytes straight from the map. Otherwise convert through f32 on the host.
    // A bitsandbytes NF4 weight (a QLoRA model saved by transformers) is dequantized on the device.
    private static unsafe void Upload(ShardedSafeTensors files, string name, Tensor t)
    {
        if (IsBnb4Bit(files, name)) { UploadBnb4Bit(files, name, t); return; }
        if (QuantOf(files) is { } quant && quant.IsQuantized(files, name)) { t.CopyFromFloats(quant.Dequantize(files, name, t.Shape)); return; }
        var info = files.Get(name);
        var fileDType = info.DType switch { SafeTensorsDType.F32 => DType.F32, SafeTensorsDType.BF16 => DType.BF16, _ => DType.F16 };
        if (fileDType == t.DType && info.ByteLength <= int.MaxValue)
        {
            t.CopyFromBytes(files.GetBytes(name));
            return;
        }
        t.CopyFromFloats(files.ReadAsFloat32(name));
    }

    /// <summary>
    /// A checkpoint tensor as f32 on the host, as the loader sees it: converted from its float dtype, a GPTQ/AWQ
    /// projection dequantized, or a bitsandbytes NF4 weight dequantized on the device (the merge and the GGUF export
    /// read a quantized base this way).
    /// </summary>
    public static float[] ReadAsFloat32(ComputeDevice device, ShardedSafeTensors files, string name, int[] shape)
    {
        if (QuantOf(files) is { } quant && quant.IsQuantized(files, name)) return quant.Dequantize(files, name, shape);
        if (!IsBnb4Bit(files, name)) return files.ReadAsFloat32(name);
        using var t = device.Allocate(DType.F32, shape);
        UploadBnb4Bit(files, name, t);
        return t.ToArray<float>();
    }

    private static void UploadBnb4Bit(ShardedSafeTensors files, string name, Tensor t)
    {
        var state = new Dictionary<string, HostArray>(StringComparer.Ordinal);
        foreach (var suffix in Bnb4BitSuffixes.Prepend(""))
        {
            if (!files.TryGet(name + suffix, out var info)) continue; // FromStateDict names what a state lacks
            state[name + suffix] = new HostArray(info.DType, info.Shape.ToArray(), files.GetBytes(name + suffix).ToArray());
        }
        Nf4Tensor q;
        try { q = Nf4Tensor.FromStateDict(t.Device, state, name); }
        catch (Exception e) when (e is InvalidDataException or JsonException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"tensor '{name}' in {Path.GetFileName(files.FileOf(name))}: bitsandbytes 4-bit state is unreadable: {e.Message}", e);
        }
        using (q)
        {
            if (!q.Shape.SequenceEqual(t.Shape))
                throw new InvalidDataException($"tensor '{name}' in {Path.GetFileName(files.FileOf(name))}: bitsandbytes 4-bit state has shape [{string.Join(", ", q.Shape)}], expected [{string.Join(", ", t.Shape)}]");
            q.Dequantize(t.Device.Kernels, t);
            t.Device.Synchronize();
        }
    }

    /// <summary>
    /// Writes config.json and the weights (single file, or shards plus index above maxShardBytes) in
    /// the given dtype. Tensor order is the HF parameter order; metadata {"format":"pt"} as transformers writes.
    /// </summary>
    public static void Save(string dir, ModelConfig config, IReadOnlyDictionary<string, float[]> weights, DType dtype, long maxShardBytes = 5L << 30)
    {
        Directory.CreateDirectory(dir);
        var writer = new ShardedSafeTensorsWriter(maxShardBytes);
        writer.SetMetadata("format", "pt");
        foreach (var (name, shape) in CausalLm.ExpectedParameters(config))
        {
            if (!weights.TryGetValue(name, out var data)) throw new ArgumentException($"no data for tensor '{name}'");
            if (data.LongLength != shape.Aggregate(1L, (a, b) => a * b)) throw new ArgumentException($"tensor '{name}' has {data.Length} values, shape [{string.Join(", ", shape)}] needs more or fewer");
            writer.Add(name, ToSafeTensorsDType(dtype), shape.Select(d => (long)d).ToArray(), Encode(data, dtype));
        }
        writer.Write(dir);
        WriteConfig(dir, config, dtype);
    }

    /// <summary>config.json of a model written in dtype (its torch_dtype), with a GPTQ/AWQ checkpoint's quantization_config when given.</summary>
    public static void WriteConfig(string dir, ModelConfig config, DType dtype, System.Text.Json.Nodes.JsonNode? quantizationConfig = null)
    {
        var json = config.ToJson();
        json["torch_dtype"] = dtype switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" };
        if (quantizationConfig != null) json["quantization_config"] = quantizationConfig;
        AtomicFile.Write(Path.Combine(dir, ConfigFileName), s =>
        {
            using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true });
            json.WriteTo(w);
        });
    }

    public static SafeTensorsDType ToSafeTensorsDType(DType t) => t switch
    {
        DType.F32 => SafeTensorsDType.F32,
        DType.BF16 => SafeTensorsDType.BF16,
        DType.F16 => SafeTensorsDType.F16,
        _ => throw new ArgumentException($"no safetensors float dtype for {t.Name()}"),
    };

    /// <summary>Little-endian bytes of data in a float dtype, as safetensors stores them (the host is little-endian, as everywhere here).</summary>
    public static byte[] Encode(float[] data, DType dtype) => dtype == DType.F32
        ? MemoryMarshal.AsBytes(data.AsSpan()).ToArray()
        : MemoryMarshal.AsBytes(dtype.ToHalfBits(data).AsSpan()).ToArray();
}
