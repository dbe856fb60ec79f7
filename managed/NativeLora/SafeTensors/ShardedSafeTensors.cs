using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using NativeLora.IO;

namespace NativeLora.SafeTensors;

/// <summary>
/// A model's weights as HF transformers stores them: either one <c>model.safetensors</c>, or
/// <c>model.safetensors.index.json</c> whose <c>weight_map</c> maps each tensor name to a shard
/// file in the same directory. Every shard is opened once; the index and the shards must agree
/// exactly (no mapped tensor missing from its shard, no shard tensor missing from the map).
/// </summary>
public sealed unsafe class ShardedSafeTensors : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";
    public const string SingleFileName = "model.safetensors";
    const long MaxIndexBytes = 100_000_000;

    readonly List<SafeTensorsFile> _shards;
    readonly Dictionary<string, SafeTensorsFile> _fileOf;
    readonly List<string> _names;

    /// <summary>The index file, or null when the model is a single file.</summary>
    public string? IndexPath { get; }
    public IReadOnlyList<SafeTensorsFile> Shards => _shards;
    /// <summary>Tensor names: weight_map order for a sharded model, header order for a single file.</summary>
    public IEnumerable<string> Names => _names;

    ShardedSafeTensors(string? indexPath, List<SafeTensorsFile> shards, Dictionary<string, SafeTensorsFile> fileOf, List<string> names)
    {
        IndexPath = indexPath; _shards = shards; _fileOf = fileOf; _names = names;
    }

    /// <summary>Opens a model directory, an index .json file, or a single .safetensors file.</summary>
    public static ShardedSafeTensors Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
        {
            string index = System.IO.Path.Combine(path, IndexFileName);
            if (File.Exists(index)) return OpenIndex(index);
            string single = System.IO.Path.Combine(path, SingleFileName);
            if (File.Exists(single)) return OpenSingle(single);
            throw new FileNotFoundException($"{path}: contains neither {IndexFileName} nor {SingleFileName}", single);
        }
        return path.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? OpenIndex(path) : OpenSingle(path);
    }

    static ShardedSafeTensors OpenSingle(string file)
    {
        var f = SafeTensorsFile.Open(file);
        var fileOf = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        var names = new List<string>();
        foreach (var t in f.Tensors) { fileOf.Add(t.Name, f); names.Add(t.Name); }
        return new ShardedSafeTensors(null, new List<SafeTensorsFile> { f }, fileOf, names);
    }

    static ShardedSafeTensors OpenIndex(string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        string directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var shards = new List<SafeTensorsFile>();
        var shardByName = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            var fileOf = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            var names = new List<string>();
            foreach (var (tensor, shardName) in weightMap)
            {
                if (!shardByName.TryGetValue(shardName, out var shard))
                {
                    string shardPath = System.IO.Path.Combine(directory, shardName);
                    if (!File.Exists(shardPath))
                        throw new SafeTensorsFormatException(indexPath, $"shard '{shardName}' does not exist (looked for {shardPath})", tensor);
                    shard = SafeTensorsFile.Open(shardPath); // its own format errors name the shard path
                    shards.Add(shard);
                    shardByName.Add(shardName, shard);
                }
                if (!shard.Contains(tensor))
                    throw new SafeTensorsFormatException(indexPath, $"weight_map puts this tensor in shard '{shardName}', which does not contain it", tensor);
                fileOf.Add(tensor, shard);
                names.Add(tensor);
            }
            // A shard tensor the map does not list would be silently unreachable: treat it as a broken checkpoint.
            foreach (var (shardName, shard) in shardByName)
            {
                var unmapped = shard.Tensors.Where(t => !fileOf.TryGetValue(t.Name, out var owner) || owner != shard).Select(t => t.Name).ToList();
                if (unmapped.Count > 0)
                    throw new SafeTensorsFormatException(indexPath,
                        $"shard '{shardName}' holds {unmapped.Count} tensor(s) missing from weight_map: {string.Join(", ", unmapped.Take(5).Select(n => $"'{n}'"))}{(unmapped.Count > 5 ? ", ..." : "")}",
                        unmapped[0]);
            }
            return new ShardedSafeTensors(indexPath, shards, fileOf, names);
        }
        catch
        {
            foreach (var s in shards) s.Dispose();
            throw;
        }
    }

    /// <summary>Parses weight_map (tensor → shard file name), in file order, rejecting duplicates and unsafe shard names.</summary>
    static List<(string Tensor, string Shard)> ReadWeightMap(string indexPath)
    {
        byte[] bytes;
        using (var stream = new FileStream(indexPath, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            if (stream.Length > MaxIndexBytes)
                throw new SafeTensorsFormatException(indexPath, $"index is {stream.Length} bytes, over the {MaxIndexBytes}-byte limit");
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }
        JsonDocument doc;
        try
        {
            new UTF8Encoding(false, true).GetCharCount(bytes);
            doc = JsonDocument.Parse(bytes);
        }
        catch (DecoderFallbackException e) { throw new SafeTensorsFormatException(indexPath, "index is not valid UTF-8", inner: e); }
        catch (JsonException e) { throw new SafeTensorsFormatException(indexPath, $"index is not valid JSON: {e.Message}", inner: e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new SafeTensorsFormatException(indexPath, "index top level is not a JSON object");
            if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new SafeTensorsFormatException(indexPath, "index has no 'weight_map' object");
            var result = new List<(string, string)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in map.EnumerateObject())
            {
                string tensor, shard;
                try
                {
                    tensor = prop.Name;
                    if (prop.Value.ValueKind != JsonValueKind.String)
                        throw new SafeTensorsFormatException(indexPath, $"weight_map value is a JSON {prop.Value.ValueKind}, not a shard file name", tensor);
                    shard = prop.Value.GetString()!;
                }
                catch (InvalidOperationException e) { throw new SafeTensorsFormatException(indexPath, "weight_map has a string that is not valid Unicode", inner: e); }
                if (!seen.Add(tensor))
                    throw new SafeTensorsFormatException(indexPath, "tensor listed twice in weight_map", tensor);
                if (!IsPlainFileName(shard))
                    throw new SafeTensorsFormatException(indexPath, $"shard name '{shard}' is not a plain file name in the index's directory (path separators and '..' are refused)", tensor);
                result.Add((tensor, shard));
            }
            return result;
        }
    }

    // Shards must live next to the index: no separators, no '..', no rooted or drive paths.
    static bool IsPlainFileName(string name) =>
        name.Length > 0 && name.IndexOfAny(['/', '\\', '\0', ':']) < 0 && !name.Contains("..", StringComparison.Ordinal)
        && !System.IO.Path.IsPathRooted(name) && System.IO.Path.GetFileName(name) == name;

    // ---- lookups, delegated to the owning shard ------------------------------------------

    public bool TryGet(string name, out SafeTensorInfo info)
    {
        if (_fileOf.TryGetValue(name, out var file)) return file.TryGet(name, out info);
        info = null!;
        return false;
    }

    public bool Contains(string name) => _fileOf.ContainsKey(name);

    /// <summary>The shard holding the tensor.</summary>
    public SafeTensorsFile GetFile(string name) =>
        _fileOf.TryGetValue(name, out var file) ? file
            : throw new KeyNotFoundException($"{IndexPath ?? _shards[0].Path}: no tensor named '{name}' ({_names.Count} tensors in {_shards.Count} file(s))");

    /// <summary>Path of the file the tensor came from.</summary>
    public string FileOf(string name) => GetFile(name).Path;

    public SafeTensorInfo Get(string name) => GetFile(name).Get(name);
    public ReadOnlySpan<byte> GetBytes(string name) => GetFile(name).GetBytes(name);
    public ReadOnlySpan<T> GetSpan<T>(string name) where T : unmanaged => GetFile(name).GetSpan<T>(name);
    public byte* GetPointer(string name) => GetFile(name).GetPointer(name);
    public float[] ReadAsFloat32(string name) => GetFile(name).ReadAsFloat32(name);

    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }
}

/// <summary>
/// Writes a model as HF transformers does: tensors go into shards of at most maxShardBytes of
/// tensor data, filled greedily in insertion order (huggingface_hub
/// <c>split_state_dict_into_shards_factory</c>: a tensor larger than the limit gets a shard of its
/// own; otherwise a new shard starts when the next tensor would tip the current one over).
/// One shard → <c>model.safetensors</c>; several → <c>model-0000i-of-0000N.safetensors</c> plus
/// <c>model.safetensors.index.json</c>. Metadata goes into every shard.
/// </summary>
public sealed class ShardedSafeTensorsWriter
{
    static readonly Regex ShardFilePattern = new(@"^model-\d{5}-of-\d{5}\.safetensors$", RegexOptions.CultureInvariant);

    readonly long _maxShardBytes;
    readonly List<(string Name, SafeTensorsDType DType, long[] Shape, long Length, Func<ReadOnlyMemory<byte>> Data)> _tensors = new();
    readonly HashSet<string> _names = new(StringComparer.Ordinal);
    readonly List<KeyValuePair<string, string>> _metadata = new();

    public ShardedSafeTensorsWriter(long maxShardBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        _maxShardBytes = maxShardBytes;
    }

    public ShardedSafeTensorsWriter Add(string name, SafeTensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (_names.Contains(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        // Full validation happens again in SafeTensorsWriter.Add; doing it now reports errors at the caller's line.
        SafeTensorsWriter.RequireLength(name, dtype, shape, data);
        return Add(name, dtype, shape, () => data);
    }

    /// <summary>Adds a tensor produced only when its shard is written (peak memory: one tensor).</summary>
    public ShardedSafeTensorsWriter Add(string name, SafeTensorsDType dtype, long[] shape, Func<ReadOnlyMemory<byte>> produce)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        long expected = SafeTensorsWriter.ByteLength(name, dtype, shape);
        if (!_names.Add(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        _tensors.Add((name, dtype, (long[])shape.Clone(), expected, produce));
        return this;
    }

    public ShardedSafeTensorsWriter SetMetadata(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        int i = _metadata.FindIndex(kv => kv.Key == key);
        if (i >= 0) _metadata[i] = new(key, value);
        else _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>Shard assignment: lists of indices into the added tensors.</summary>
    List<List<int>> Plan()
    {
        var shards = new List<List<int>>();
        var current = new List<int>();
        long currentBytes = 0;
        for (int i = 0; i < _tensors.Count; i++)
        {
            long size = _tensors[i].Length;
            if (size > _maxShardBytes) { shards.Add(new List<int> { i }); continue; }
            if (currentBytes + size > _maxShardBytes) { shards.Add(current); current = new List<int>(); currentBytes = 0; }
            current.Add(i);
            currentBytes += size;
        }
        if (current.Count > 0 || shards.Count == 0) shards.Add(current);
        return shards;
    }

    /// <summary>Writes into directory (created if needed); returns the file names written. Stale shards/index from an earlier save are removed.</summary>
    public IReadOnlyList<string> Write(string directory)
    {
        Directory.CreateDirectory(directory);
        var plan = Plan();
        var written = new List<string>();
        if (plan.Count == 1)
        {
            BuildShard(plan[0]).Write(System.IO.Path.Combine(directory, ShardedSafeTensors.SingleFileName));
            written.Add(ShardedSafeTensors.SingleFileName);
        }
        else
        {
            var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal); // json.dumps(sort_keys=True)
            long totalSize = 0;
            for (int s = 0; s < plan.Count; s++)
            {
                string fileName = $"model-{s + 1:D5}-of-{plan.Count:D5}.safetensors";
                BuildShard(plan[s]).Write(System.IO.Path.Combine(directory, fileName));
                written.Add(fileName);
                foreach (int i in plan[s]) { weightMap.Add(_tensors[i].Name, fileName); totalSize += _tensors[i].Length; }
            }
            // The index goes last, so a crash mid-save never leaves an index naming missing shards.
            AtomicFile.Write(System.IO.Path.Combine(directory, ShardedSafeTensors.IndexFileName), stream => WriteIndex(stream, totalSize, weightMap));
            written.Add(ShardedSafeTensors.IndexFileName);
        }
        RemoveStale(directory, written);
        return written;
    }

    SafeTensorsWriter BuildShard(List<int> indices)
    {
        var w = new SafeTensorsWriter();
        foreach (var kv in _metadata) w.SetMetadata(kv.Key, kv.Value);
        foreach (int i in indices) { var t = _tensors[i]; w.Add(t.Name, t.DType, t.Shape, t.Data); }
        return w;
    }

    // Same shape as transformers' json.dumps(index, indent=2, sort_keys=True) + "\n".
    static void WriteIndex(Stream stream, long totalSize, SortedDictionary<string, string> weightMap)
    {
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, NewLine = "\n", Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", totalSize);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (name, file) in weightMap) json.WriteString(name, file);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        stream.WriteByte((byte)'\n');
    }

    // An old index next to a new single file (or old extra shards) would make readers load stale weights.
    static void RemoveStale(string directory, List<string> written)
    {
        foreach (var file in Directory.EnumerateFiles(directory))
        {
            string name = System.IO.Path.GetFileName(file);
            bool ours = name == ShardedSafeTensors.IndexFileName || name == ShardedSafeTensors.SingleFileName || ShardFilePattern.IsMatch(name);
            if (ours && !written.Contains(name)) File.Delete(file);
        }
    }
}
