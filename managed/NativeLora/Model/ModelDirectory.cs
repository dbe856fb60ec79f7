using System.Text.Json;
using NativeLora.Devices;
using NativeLora.IO;
using NativeLora.Kernels;
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

    public static ModelConfig ReadConfig(string dir)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory '{dir}' does not exist");
        var path = Path.Combine(dir, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{dir}: no {ConfigFileName} (expected a Hugging Face model directory)", path);
        return ModelConfig.Load(path);
    }

    public static CausalLm Load(ComputeDevice device, string dir, DType computeDType)
    {
        if (!computeDType.IsFloat()) throw new ArgumentException($"compute dtype must be f32, bf16 or f16, got {computeDType.Name()}");
        var config = ReadConfig(dir);
        using var files = ShardedSafeTensors.Open(dir);
        var expected = CausalLm.ExpectedParameters(config);
        CheckCheckpoint(files, config, dir);

        var parameters = new Dictionary<string, Tensor>();
        try
        {
            foreach (var (name, shape) in expected)
            {
                var t = device.Allocate(computeDType, shape);
                parameters[name] = t;
                Upload(files, name, t);
            }
            return new CausalLm(device, config, parameters);
        }
        catch
        {
            foreach (var t in parameters.Values) t.Dispose(); // nothing half-loads
            throw;
        }
    }

    /// <summary>Reports every missing, extra, misshapen or non-float tensor of a checkpoint at once.</summary>
    public static void CheckCheckpoint(ShardedSafeTensors files, ModelConfig config, string dir)
    {
        var expected = CausalLm.ExpectedParameters(config);
        var problems = new List<string>();
        foreach (var (name, shape) in expected)
        {
            if (!files.TryGet(name, out var info)) { problems.Add($"missing tensor '{name}' [{string.Join(", ", shape)}]"); continue; }
            if (!info.Shape.Select(d => (int)d).SequenceEqual(shape) || info.Shape.Length != shape.Length)
                problems.Add($"tensor '{name}' in {Path.GetFileName(files.FileOf(name))} has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
            else if (info.DType is not (SafeTensorsDType.F32 or SafeTensorsDType.BF16 or SafeTensorsDType.F16))
                problems.Add($"tensor '{name}' has dtype {info.DType}, expected F32, BF16 or F16");
        }
        var names = expected.Select(e => e.Name).ToHashSet();
        foreach (var extra in files.Names.Where(n => !names.Contains(n) && !IsIgnorable(n, config)).OrderBy(n => n))
            problems.Add($"unexpected tensor '{extra}' in {Path.GetFileName(files.FileOf(extra))}");
        if (problems.Count > 0)
            throw new InvalidDataException($"{dir}: the checkpoint does not match its {config.ModelType} config.json ({problems.Count} problem(s)):\n  " + string.Join("\n  ", problems));

    }

    // Same dtype: bytes straight from the map. Otherwise convert through f32 on the host.
    private static unsafe void Upload(ShardedSafeTensors files, string name, Tensor t)
    {
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
        var json = config.ToJson();
        json["torch_dtype"] = dtype switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" };
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

    public static byte[] Encode(float[] data, DType dtype)
    {
        switch (dtype)
        {
            case DType.F32:
                var bytes = new byte[data.Length * 4];
                Buffer.BlockCopy(data, 0, bytes, 0, bytes.Length);
                return bytes;
            case DType.BF16:
            case DType.F16:
                var h = new byte[data.Length * 2];
                for (int i = 0; i < data.Length; i++)
                {
                    ushort bits = dtype == DType.BF16 ? FloatBits.FloatToBf16(data[i]) : FloatBits.FloatToHalf(data[i]);
                    h[2 * i] = (byte)bits;
                    h[2 * i + 1] = (byte)(bits >> 8);
                }
                return h;
            default: throw new ArgumentException($"cannot encode {dtype.Name()}");
        }
    }
}
