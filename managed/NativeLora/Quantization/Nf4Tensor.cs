using System.Globalization;
using System.Text;
using System.Text.Json;
using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Quantization;

/// <summary>A named array on the host, ready for a safetensors writer (or read from one).</summary>
public sealed record HostArray(SafeTensorsDType DType, long[] Shape, byte[] Data)
{
    public static HostArray Floats(float[] values) => new(SafeTensorsDType.F32, new long[] { values.Length }, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    public float[] ToFloats()
    {
        if (DType != SafeTensorsDType.F32) throw new InvalidDataException($"expected F32, got {DType.ToHeaderString()}");
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(Data).ToArray();
    }
}

/// <summary>
/// An NF4-quantized weight with everything needed to restore it: bitsandbytes' QuantState as an explicit object
/// (kernels and format rules: Kernels/Nf4.cs). Device tensors:
/// <list type="bullet">
/// <item><see cref="Packed"/>: U8 [(n+1)/2, 1], two 4-bit codes per byte (bitsandbytes' Params4bit layout);</item>
/// <item><see cref="Absmax"/>: one scale per block of <see cref="BlockSize"/> — F32, or U8 codes when double-quantized;</item>
/// <item><see cref="QuantMap"/>: F32 [16], the NF4 table;</item>
/// <item>when double-quantized: <see cref="NestedAbsmax"/> F32 [one per <see cref="NestedBlockSize"/> blocks],
/// <see cref="NestedQuantMap"/> F32 [256] (the signed dynamic map) and <see cref="Offset"/>.</item>
/// </list>
/// <see cref="ToStateDict"/> / <see cref="FromStateDict"/> use the names of HF bitsandbytes checkpoints
/// (<c>weight</c>, <c>weight.absmax</c>, <c>weight.quant_map</c>, <c>weight.nested_absmax</c>,
/// <c>weight.nested_quant_map</c>, <c>weight.quant_state.bitsandbytes__nf4</c>: the JSON that QuantState.as_dict(packed=True)
/// writes, byte for byte).
/// </summary>
public sealed class Nf4Tensor : IDisposable
{
    public const int DefaultBlockSize = 64;
    public const int DefaultNestedBlockSize = 256;

    /// <summary>Storage with the default blocks and double quantization, code tables aside: 4-bit codes, an 8-bit absmax per block, an f32 scale per nested block (4.127).</summary>
    public const double PlannedBitsPerParameter = 4.0 + 8.0 / DefaultBlockSize + 32.0 / (DefaultBlockSize * DefaultNestedBlockSize);

    public int[] Shape { get; }
    /// <summary>The dtype of the weight that was quantized (the state's "dtype"; dequantizing may target any float dtype).</summary>
    public DType DType { get; }
    public long ElementCount { get; }
    public int BlockSize { get; }
    public int NestedBlockSize { get; }
    public float Offset { get; }
    public Tensor Packed { get; }
    public Tensor Absmax { get; }
    public Tensor QuantMap { get; }
    public Tensor? NestedAbsmax { get; }
    public Tensor? NestedQuantMap { get; }

    public bool Nested => NestedAbsmax != null;
    public long Blocks => Nf4.BlockCount(ElementCount, BlockSize);

    private Nf4Tensor(int[] shape, DType dtype, int blockSize, Tensor packed, Tensor absmax, Tensor quantMap,
        int nestedBlockSize = DefaultNestedBlockSize, float offset = 0, Tensor? nestedAbsmax = null, Tensor? nestedQuantMap = null)
    {
        Shape = (int[])shape.Clone();
        DType = dtype;
        ElementCount = Tensor.CountElements(shape);
        BlockSize = blockSize;
        Packed = packed;
        Absmax = absmax;
        QuantMap = quantMap;
        NestedBlockSize = nestedBlockSize;
        Offset = offset;
        NestedAbsmax = nestedAbsmax;
        NestedQuantMap = nestedQuantMap;
    }

    /// <summary>
    /// Bytes of the quantized state: packed codes, absmax (codes or f32), both code tables, nested scales and the
    /// f32 offset. The JSON of the serialized state (~150 bytes per tensor) is not counted.
    /// </summary>
    public long StorageBytes =>
        Packed.ByteLength + Absmax.ByteLength + QuantMap.ByteLength + (Nested ? NestedAbsmax!.ByteLength + NestedQuantMap!.ByteLength + 4 : 0);

    public double BitsPerParameter => 8.0 * StorageBytes / ElementCount;

    /// <summary>Quantizes a float weight (f32, bf16 or f16) in blocks of 64; with doubleQuant the absmax vector is quantized too.</summary>
    public static Nf4Tensor Quantize(KernelSet k, Tensor weight, bool doubleQuant = true, int blockSize = DefaultBlockSize)
    {
        if (!weight.DType.IsFloat()) throw new ArgumentException($"NF4 quantizes a float tensor (f32, bf16, f16), got {weight}");
        if (blockSize < 2 || blockSize % 2 != 0) throw new ArgumentException($"block size must be even, got {blockSize}");
        var dev = weight.Device;
        long n = weight.ElementCount;
        int blocks = checked((int)Nf4.BlockCount(n, blockSize));
        var packed = dev.Allocate(DType.U8, checked((int)((n + 1) / 2)), 1);
        var absmax = dev.Allocate(DType.F32, blocks);
        var quantMap = dev.Allocate(DType.F32, Nf4.Code.Length);
        quantMap.CopyFrom<float>(Nf4.Code);
        Run(weight.DType, new QuantizeCall(k, weight, packed, absmax, blockSize));
        if (!doubleQuant) return new Nf4Tensor(weight.Shape, weight.DType, blockSize, packed, absmax, quantMap);

        int nbs = DefaultNestedBlockSize;
        int groups = checked((int)Nf4.BlockCount(blocks, nbs));
        float offset;
        using (var sums = dev.Allocate(DType.F32, groups))
        {
            // mean of the absmax vector: per-256-block f32 sums on the device, their total in float64 here
            Nf4.AbsmaxSums(k, absmax.View<float>(), sums.View<float>(), nbs);
            double total = 0;
            foreach (var s in sums.ToArray<float>()) total += s;
            offset = (float)(total / blocks);
        }
        var q = dev.Allocate(DType.U8, blocks);
        var scale = dev.Allocate(DType.F32, groups);
        var map = dev.Allocate(DType.F32, 256);
        map.CopyFrom<float>(Nf4.SignedDynamicMap());
        Nf4.QuantizeAbsmax(k, absmax.View<float>(), map.View<float>(), offset, q.View<byte>(), scale.View<float>(), nbs);
        absmax.Dispose();
        return new Nf4Tensor(weight.Shape, weight.DType, blockSize, packed, q, quantMap, nbs, offset, scale, map);
    }

    /// <summary>Writes the f32 absmax vector (restored from its double quantization when nested) into output (F32 [Blocks]).</summary>
    public void DequantizeAbsmax(KernelSet k, Tensor output)
    {
        Require(output, DType.F32, "absmax output");
        RequireElements(output, Blocks, "absmax output");
        if (!Nested) { Absmax.CopyTo(output); return; }
        Nf4.DequantizeAbsmax(k, Absmax.View<byte>(), NestedQuantMap!.View<float>(), NestedAbsmax!.View<float>(), Offset, output.View<float>(), NestedBlockSize);
    }

    /// <summary>Restores the weight into output (any float dtype, same element count).</summary>
    public void Dequantize(KernelSet k, Tensor output)
    {
        using var _profile = Diagnostics.OpProfiler.Time("nf4.dequantize", output.Device);
        RequireElements(output, ElementCount, "NF4 output");
        // GPU variant into bf16/f16: the fused word kernel (one pass, absmax restored in registers)
        if (k.GpuVariants && output.DType.SizeOf() == 2 && Nf4.WordsApply(ElementCount, BlockSize, Nested ? NestedBlockSize : 0))
        {
            var none = QuantMap.View<float>().SubView(0, 0); // an empty f32 view for the arguments the path does not read
            var absF = Nested ? none : Absmax.View<float>();
            var absQ = Nested ? Absmax.View<byte>() : Packed.View<byte>().SubView(0, 0);
            var map = Nested ? NestedQuantMap!.View<float>() : none;
            var scale = Nested ? NestedAbsmax!.View<float>() : none;
            if (output.DType == DType.BF16)
                Nf4.DequantizeWords<Bf16>(k, Packed.View<byte>(), absF, absQ, map, scale, Offset, QuantMap.View<float>(), output.View<ushort>(), BlockSize, Nested ? NestedBlockSize : 0);
            else
                Nf4.DequantizeWords<F16>(k, Packed.View<byte>(), absF, absQ, map, scale, Offset, QuantMap.View<float>(), output.View<ushort>(), BlockSize, Nested ? NestedBlockSize : 0);
            return;
        }
        Tensor? restored = null;
        if (Nested)
        {
            restored = output.Device.Allocate(DType.F32, checked((int)Blocks));
            DequantizeAbsmax(k, restored);
        }
        Run(output.DType, new DequantizeCall(k, Packed, restored ?? Absmax, QuantMap, output, BlockSize));
        restored?.Dispose(); // back to the pool; later work on this stream is ordered after the kernel
    }

    /// <summary>
    /// The f32 absmax and weights this state describes, decoded on the host from its bytes by <see cref="Nf4.Reference"/>:
    /// what `selfcheck --kernels` and the tests compare the dequantize and fused-matmul kernels with.
    /// </summary>
    public (double[] Absmax, double[] Weights) ReferenceDequantize()
    {
        var absmax = Nested
            ? Nf4.Reference.RestoreAbsmax(Absmax.ToArray<byte>(), NestedQuantMap!.ToArray<float>(), NestedAbsmax!.ToArray<float>(), Offset, NestedBlockSize)
            : Array.ConvertAll(Absmax.ToArray<float>(), v => (double)v);
        return (absmax, Nf4.Reference.Dequantize(Packed.ToArray<byte>(), absmax, BlockSize, ElementCount));
    }

    // ---- serialization (HF / bitsandbytes names) ----

    public const string QuantStateSuffix = ".quant_state.bitsandbytes__nf4";

    /// <summary>The state as HF checkpoints store it, under prefix (e.g. "model.layers.0.self_attn.q_proj.weight").</summary>
    public Dictionary<string, HostArray> ToStateDict(string prefix = "weight")
    {
        var d = new Dictionary<string, HostArray>(StringComparer.Ordinal)
        {
            [prefix] = new(SafeTensorsDType.U8, new long[] { Packed.Dim(0), 1 }, Packed.ToArray<byte>()),
            [prefix + ".absmax"] = Nested
                ? new(SafeTensorsDType.U8, new long[] { Blocks }, Absmax.ToArray<byte>())
                : HostArray.Floats(Absmax.ToArray<float>()),
            [prefix + ".quant_map"] = HostArray.Floats(QuantMap.ToArray<float>()),
        };
        if (Nested)
        {
            d[prefix + ".nested_absmax"] = HostArray.Floats(NestedAbsmax!.ToArray<float>());
            d[prefix + ".nested_quant_map"] = HostArray.Floats(NestedQuantMap!.ToArray<float>());
        }
        var json = Encoding.UTF8.GetBytes(QuantStateJson());
        d[prefix + QuantStateSuffix] = new(SafeTensorsDType.U8, new long[] { json.Length }, json);
        return d;
    }

    /// <summary>
    /// The non-tensor fields as bitsandbytes packs them: json.dumps of {quant_type, blocksize, dtype, shape} and, when
    /// nested, {nested_blocksize, nested_dtype, nested_offset} — Python's separators and float repr.
    /// </summary>
    public string QuantStateJson()
    {
        var sb = new StringBuilder();
        sb.Append("{\"quant_type\": \"nf4\", \"blocksize\": ").Append(BlockSize.ToString(CultureInfo.InvariantCulture));
        sb.Append(", \"dtype\": \"").Append(TorchName(DType)).Append("\", \"shape\": [");
        sb.Append(string.Join(", ", Shape.Select(s => s.ToString(CultureInfo.InvariantCulture)))).Append(']');
        if (Nested)
        {
            sb.Append(", \"nested_blocksize\": ").Append(NestedBlockSize.ToString(CultureInfo.InvariantCulture));
            sb.Append(", \"nested_dtype\": \"float32\", \"nested_offset\": ").Append(PythonFloatRepr(Offset));
        }
        return sb.Append('}').ToString();
    }

    /// <summary>Reads a state written by <see cref="ToStateDict"/> or by bitsandbytes (nested or not) onto the device.</summary>
    public static Nf4Tensor FromStateDict(ComputeDevice device, IReadOnlyDictionary<string, HostArray> dict, string prefix = "weight")
    {
        HostArray Get(string key) => dict.TryGetValue(key, out var a) ? a : throw new InvalidDataException($"NF4 state: '{key}' is missing");
        var stateKey = prefix + QuantStateSuffix;
        var stateBytes = Get(stateKey);
        using var json = JsonDocument.Parse(stateBytes.Data);
        var root = json.RootElement;
        JsonElement Field(string name) => root.TryGetProperty(name, out var v) ? v : throw new InvalidDataException($"NF4 state: '{stateKey}' has no \"{name}\"");
        string quantType = Field("quant_type").GetString() ?? "";
        if (quantType != "nf4") throw new InvalidDataException($"NF4 state: quant_type is \"{quantType}\", expected \"nf4\"");
        int blockSize = Field("blocksize").GetInt32();
        if (blockSize < 2 || blockSize % 2 != 0) throw new InvalidDataException($"NF4 state: blocksize {blockSize} must be even");
        var dtype = FromTorchName(Field("dtype").GetString() ?? "");
        var shape = Field("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        long n = Tensor.CountElements(shape);
        long blocks = Nf4.BlockCount(n, blockSize);
        bool nested = root.TryGetProperty("nested_offset", out var offsetElement);

        void Expect(string key, HostArray a, SafeTensorsDType t, long elements)
        {
            if (a.DType != t || a.Data.Length != elements * t.ElementSize())
                throw new InvalidDataException($"NF4 state: '{key}' must be {t.ToHeaderString()} with {elements} elements for shape [{string.Join(", ", shape)}], got {a.DType.ToHeaderString()} [{string.Join(", ", a.Shape)}]");
        }
        var packedArr = Get(prefix);
        Expect(prefix, packedArr, SafeTensorsDType.U8, (n + 1) / 2);
        var absmaxArr = Get(prefix + ".absmax");
        Expect(prefix + ".absmax", absmaxArr, nested ? SafeTensorsDType.U8 : SafeTensorsDType.F32, blocks);
        var quantMapArr = Get(prefix + ".quant_map");
        Expect(prefix + ".quant_map", quantMapArr, SafeTensorsDType.F32, 16);
        // the encoder's thresholds belong to this table; a different map would make re-quantizing inconsistent
        if (!quantMapArr.ToFloats().AsSpan().SequenceEqual(Nf4.Code))
            throw new InvalidDataException($"NF4 state: '{prefix}.quant_map' is not the NF4 table");

        var tensors = new List<Tensor>();
        Tensor Upload(HostArray a, DType t, params int[] s)
        {
            var tensor = device.Allocate(t, s);
            tensors.Add(tensor);
            tensor.CopyFromBytes(a.Data);
            return tensor;
        }
        try
        {
            var packed = Upload(packedArr, DType.U8, checked((int)((n + 1) / 2)), 1);
            var quantMap = Upload(quantMapArr, DType.F32, 16);
            if (!nested)
                return new Nf4Tensor(shape, dtype, blockSize, packed, Upload(absmaxArr, DType.F32, (int)blocks), quantMap);

            int nbs = Field("nested_blocksize").GetInt32();
            if (nbs < 1) throw new InvalidDataException($"NF4 state: nested_blocksize {nbs} must be positive");
            string nestedDtype = Field("nested_dtype").GetString() ?? "";
            if (nestedDtype != "float32") throw new InvalidDataException($"NF4 state: nested_dtype \"{nestedDtype}\" is not supported (float32)");
            float offset = (float)offsetElement.GetDouble(); // float(qs_dict["nested_offset"]) → f32 tensor
            var nestedAbsmaxArr = Get(prefix + ".nested_absmax");
            Expect(prefix + ".nested_absmax", nestedAbsmaxArr, SafeTensorsDType.F32, Nf4.BlockCount(blocks, nbs));
            var nestedMapArr = Get(prefix + ".nested_quant_map");
            Expect(prefix + ".nested_quant_map", nestedMapArr, SafeTensorsDType.F32, 256);
            return new Nf4Tensor(shape, dtype, blockSize, packed, Upload(absmaxArr, DType.U8, (int)blocks), quantMap, nbs, offset,
                Upload(nestedAbsmaxArr, DType.F32, (int)Nf4.BlockCount(blocks, nbs)), Upload(nestedMapArr, DType.F32, 256));
        }
        catch
        {
            foreach (var t in tensors) t.Dispose();
            throw;
        }
    }

    // str(torch.dtype).strip("torch.") in bitsandbytes
    private static string TorchName(DType t) => t switch
    {
        DType.F32 => "float32",
        DType.BF16 => "bfloat16",
        DType.F16 => "float16",
        _ => throw new ArgumentException($"not a float dtype: {t}"),
    };

    private static DType FromTorchName(string s) => s switch
    {
        "float32" => DType.F32,
        "bfloat16" => DType.BF16,
        "float16" => DType.F16,
        _ => throw new InvalidDataException($"NF4 state: dtype \"{s}\" is not one of float32, bfloat16, float16"),
    };

    /// <summary>Python's repr of a float (what json.dumps writes): shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    internal static string PythonFloatRepr(double v)
    {
        if (double.IsNaN(v)) return "NaN";
        if (double.IsInfinity(v)) return v > 0 ? "Infinity" : "-Infinity";
        string sign = v < 0 || (v == 0 && double.IsNegative(v)) ? "-" : "";
        if (v == 0) return sign + "0.0";
        // .NET's "E16" is not shortest; "R" is, so take its digits and decimal exponent
        string r = Math.Abs(v).ToString("R", CultureInfo.InvariantCulture);
        int e = 0;
        int ePos = r.IndexOfAny(new[] { 'E', 'e' });
        if (ePos >= 0) { e = int.Parse(r[(ePos + 1)..], CultureInfo.InvariantCulture); r = r[..ePos]; }
        int dot = r.IndexOf('.');
        string intPart = dot >= 0 ? r[..dot] : r, frac = dot >= 0 ? r[(dot + 1)..] : "";
        string digits = (intPart + frac).TrimStart('0');
        int decpt = intPart.TrimStart('0').Length + e; // value = 0.DIGITS × 10^decpt
        if (intPart.TrimStart('0').Length == 0) decpt -= frac.Length - frac.TrimStart('0').Length;
        digits = digits.TrimEnd('0');
        if (decpt > -4 && decpt <= 16)
        {
            if (decpt <= 0) return sign + "0." + new string('0', -decpt) + digits;
            if (decpt >= digits.Length) return sign + digits + new string('0', decpt - digits.Length) + ".0";
            return sign + digits[..decpt] + "." + digits[decpt..];
        }
        int exp = decpt - 1;
        string mantissa = digits.Length > 1 ? digits[0] + "." + digits[1..] : digits;
        return sign + mantissa + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00", CultureInfo.InvariantCulture);
    }

    public void Dispose()
    {
        Packed.Dispose();
        Absmax.Dispose();
        QuantMap.Dispose();
        NestedAbsmax?.Dispose();
        NestedQuantMap?.Dispose();
    }

    private readonly record struct QuantizeCall(KernelSet K, Tensor Weight, Tensor Packed, Tensor Absmax, int BlockSize) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> => Nf4.Quantize<T, S>(K, Weight.View<T>(), Packed.View<byte>(), Absmax.View<float>(), BlockSize);
    }

    private readonly record struct DequantizeCall(KernelSet K, Tensor Packed, Tensor Absmax, Tensor Code, Tensor Output, int BlockSize) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Nf4.Dequantize<T, S>(K, Packed.View<byte>(), Absmax.View<float>(), Code.View<float>(), Output.View<T>(), BlockSize);
    }
}
