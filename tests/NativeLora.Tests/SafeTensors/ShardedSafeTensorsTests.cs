using System.Text.Json;
using NativeLora.IO;
using NativeLora.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.SafeTensors;

public class ShardedSafeTensorsTests : TempDirTests
{
    static byte[] Bytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    string Model => Path.Combine(Dir, "model");

    /// <summary>Writes U8 tensors t0..tN-1 with the given byte sizes; returns their contents.</summary>
    Dictionary<string, byte[]> WriteU8Model(long maxShard, params int[] sizes)
    {
        var w = new ShardedSafeTensorsWriter(maxShard).SetMetadata("format", "pt");
        var contents = new Dictionary<string, byte[]>();
        for (int i = 0; i < sizes.Length; i++)
        {
            var data = Bytes(sizes[i], i);
            w.Add($"t{i}", SafeTensorsDType.U8, [sizes[i]], data);
            contents[$"t{i}"] = data;
        }
        w.Write(Model);
        return contents;
    }

    static string[] FilesIn(string dir) => Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    static void AssertNotHeldOpen(string path)
    {
        using var exclusive = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
    }

    [Test]
    public void ShardsFollowHfGreedySplitAndRoundTrip()
    {
        // huggingface_hub's docstring example scaled down: limit 10, sizes [6,6,2,6,2,2] -> [6], [6+2], [6+2+2].
        var contents = WriteU8Model(100, 60, 60, 20, 60, 20, 20);
        Assert.That(FilesIn(Model), Is.EqualTo(new[]
        {
            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
        }));

        using (var index = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Model, "model.safetensors.index.json"))))
        {
            Assert.That(index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64(), Is.EqualTo(240));
            var map = index.RootElement.GetProperty("weight_map").EnumerateObject().Select(p => (p.Name, p.Value.GetString())).ToArray();
            Assert.That(map, Is.EqualTo(new[]
            {
                ("t0", "model-00001-of-00003.safetensors"),
                ("t1", "model-00002-of-00003.safetensors"), ("t2", "model-00002-of-00003.safetensors"),
                ("t3", "model-00003-of-00003.safetensors"), ("t4", "model-00003-of-00003.safetensors"), ("t5", "model-00003-of-00003.safetensors"),
            }));
        }
        Assert.That(File.ReadAllText(Path.Combine(Model, "model.safetensors.index.json")), Does.StartWith("{\n  \"metadata\": {\n    \"total_size\": 240\n  },\n").And.EndWith("}\n"));

        foreach (string openPath in new[] { Model, Path.Combine(Model, "model.safetensors.index.json") })
        {
            using var m = ShardedSafeTensors.Open(openPath);
            Assert.That(m.Shards, Has.Count.EqualTo(3));
            Assert.That(m.Names, Is.EqualTo(new[] { "t0", "t1", "t2", "t3", "t4", "t5" }));
            foreach (var (name, data) in contents)
            {
                Assert.That(m.GetBytes(name).ToArray(), Is.EqualTo(data), name);
                Assert.That(m.Get(name).Shape, Is.EqualTo(new long[] { data.Length }));
            }
            Assert.That(Path.GetFileName(m.FileOf("t4")), Is.EqualTo("model-00003-of-00003.safetensors"));
            Assert.That(m.Shards.All(s => s.Metadata["format"] == "pt"), "metadata goes into every shard");
            var missing = Assert.Throws<KeyNotFoundException>(() => m.Get("t9"))!;
            Assert.That(missing.Message, Does.Contain("model.safetensors.index.json").And.Contain("'t9'"));
        }
    }

    [Test]
    public void OversizedTensorGetsItsOwnShard()
    {
        // HF: a tensor over the limit is emitted as its own shard immediately; the open shard continues after it.
        WriteU8Model(50, 20, 80, 20);
        using var m = ShardedSafeTensors.Open(Model);
        Assert.That(Path.GetFileName(m.FileOf("t1")), Is.EqualTo("model-00001-of-00002.safetensors"));
        Assert.That(Path.GetFileName(m.FileOf("t0")), Is.EqualTo("model-00002-of-00002.safetensors"));
        Assert.That(Path.GetFileName(m.FileOf("t2")), Is.EqualTo("model-00002-of-00002.safetensors"));
    }

    [Test]
    public void SingleFileWhenEverythingFitsAndStaleShardsAreRemoved()
    {
        WriteU8Model(10, 8, 8, 8);
        Assert.That(FilesIn(Model), Has.Length.EqualTo(4));

        var contents = WriteU8Model(1000, 8, 8, 8, 4);
        Assert.That(FilesIn(Model), Is.EqualTo(new[] { "model.safetensors" }), "old index and shards removed");
        using var m = ShardedSafeTensors.Open(Model);
        Assert.That(m.IndexPath, Is.Null);
        Assert.That(m.Names, Is.EqualTo(new[] { "t0", "t1", "t2", "t3" }));
        foreach (var (name, data) in contents) Assert.That(m.GetBytes(name).ToArray(), Is.EqualTo(data));
    }

    [Test]
    public void FloatTensorsAcrossShards()
    {
        var w = new ShardedSafeTensorsWriter(8);
        w.Add("a", SafeTensorsDType.F32, [2], SafeTensorsTestFiles.Floats(1.5f, -2f));
        w.Add("b", SafeTensorsDType.BF16, [2], new byte[] { 0x80, 0x3F, 0x40, 0xC0 }); // 1.0, -3.0
        w.Write(Model);
        using var m = ShardedSafeTensors.Open(Model);
        Assert.That(m.Shards, Has.Count.EqualTo(2));
        Assert.That(m.ReadAsFloat32("a"), Is.EqualTo(new[] { 1.5f, -2f }));
        Assert.That(m.ReadAsFloat32("b"), Is.EqualTo(new[] { 1.0f, -3.0f }));
        Assert.That(m.GetSpan<ushort>("b").ToArray(), Is.EqualTo(new ushort[] { 0x3F80, 0xC040 }));
    }

    [Test]
    public void DirectoryWithoutModelFiles()
    {
        Directory.CreateDirectory(Model);
        var e = Assert.Throws<FileNotFoundException>(() => ShardedSafeTensors.Open(Model))!;
        Assert.That(e.Message, Does.Contain(Model));
    }

    // ---- broken indexes ----

    string WriteIndex(string weightMapJson)
    {
        string path = Path.Combine(Model, "model.safetensors.index.json");
        File.WriteAllText(path, "{\"metadata\":{\"total_size\":0},\"weight_map\":" + weightMapJson + "}");
        return path;
    }

    SafeTensorsFormatException RejectsIndex(string indexPath, string? tensor, params string[] fragments)
    {
        var e = Assert.Throws<SafeTensorsFormatException>(() => ShardedSafeTensors.Open(Model).Dispose())!;
        Assert.That(e.Message, Does.StartWith(indexPath + ":"));
        if (tensor is not null) Assert.That(e.Message, Does.Contain($"'{tensor}'"));
        foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f));
        return e;
    }

    [Test]
    public void IndexNamingMissingShard()
    {
        WriteU8Model(10, 8, 8, 8);
        File.Delete(Path.Combine(Model, "model-00002-of-00003.safetensors"));
        RejectsIndex(Path.Combine(Model, "model.safetensors.index.json"), "t1", "'model-00002-of-00003.safetensors'", "does not exist");
        foreach (var f in Directory.GetFiles(Model)) AssertNotHeldOpen(f); // shard 1, opened first, was released
    }

    [Test]
    public void IndexMappingTensorToWrongShard()
    {
        WriteU8Model(10, 8, 8);
        string index = WriteIndex("{\"t0\":\"model-00001-of-00002.safetensors\",\"t1\":\"model-00001-of-00002.safetensors\"}");
        RejectsIndex(index, "t1", "'model-00001-of-00002.safetensors'", "does not contain it");
    }

    [Test]
    public void IndexNamingTensorNoShardHas()
    {
        WriteU8Model(10, 8, 8);
        string index = WriteIndex("{\"t0\":\"model-00001-of-00002.safetensors\",\"t1\":\"model-00002-of-00002.safetensors\",\"ghost\":\"model-00002-of-00002.safetensors\"}");
        RejectsIndex(index, "ghost", "does not contain it");
    }

    [Test]
    public void ShardTensorMissingFromIndex()
    {
        WriteU8Model(16, 8, 8, 8);
        string index = WriteIndex("{\"t0\":\"model-00001-of-00002.safetensors\",\"t2\":\"model-00002-of-00002.safetensors\"}");
        RejectsIndex(index, "t1", "'model-00001-of-00002.safetensors'", "missing from weight_map");
        foreach (var f in Directory.GetFiles(Model)) AssertNotHeldOpen(f);
    }

    [TestCase("../evil.safetensors")]
    [TestCase("..")]
    [TestCase("sub/model.safetensors")]
    [TestCase("sub\\\\model.safetensors")]
    [TestCase("..\\\\evil.safetensors")]
    [TestCase("/tmp/evil.safetensors")]
    [TestCase("")]
    public void IndexWithPathTraversal(string shard)
    {
        Directory.CreateDirectory(Path.Combine(Model, "sub"));
        // Real, valid files at the traversal targets: the refusal must not depend on them being absent.
        new SafeTensorsWriter().Add("t0", SafeTensorsDType.U8, [1], new byte[1]).Write(Path.Combine(Dir, "evil.safetensors"));
        new SafeTensorsWriter().Add("t0", SafeTensorsDType.U8, [1], new byte[1]).Write(Path.Combine(Model, "sub", "model.safetensors"));
        string index = WriteIndex("{\"t0\":\"" + shard + "\"}");
        RejectsIndex(index, "t0", "not a plain file name");
    }

    [TestCase("not json", "not valid JSON")]
    [TestCase("[]", "not a JSON object")]
    [TestCase("{\"metadata\":{}}", "no 'weight_map'")]
    [TestCase("{\"weight_map\":[]}", "no 'weight_map'")]
    [TestCase("{\"weight_map\":{\"t0\":5}}", "not a shard file name")]
    [TestCase("{\"weight_map\":{\"t0\":\"a.safetensors\",\"t0\":\"a.safetensors\"}}", "listed twice")]
    public void MalformedIndex(string json, string fragment)
    {
        Directory.CreateDirectory(Model);
        string index = Path.Combine(Model, "model.safetensors.index.json");
        File.WriteAllText(index, json);
        RejectsIndex(index, null, fragment);
    }

    [Test]
    public void CorruptShardErrorNamesTheShard()
    {
        WriteU8Model(10, 8, 8);
        string shard = Path.Combine(Model, "model-00002-of-00002.safetensors");
        File.WriteAllBytes(shard, File.ReadAllBytes(shard)[..^1]); // truncate: last tensor runs past the end
        var e = Assert.Throws<SafeTensorsFormatException>(() => ShardedSafeTensors.Open(Model))!;
        Assert.That(e.Message, Does.StartWith(shard).And.Contain("'t1'"));
    }
}

public class AtomicFileTests : TempDirTests
{
    [Test]
    public void FailedWriteKeepsOldContentAndLeavesNoTempFile()
    {
        string path = Path.Combine(Dir, "target.bin");
        AtomicFile.Write(path, s => s.Write("old"u8));
        var e = Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s =>
        {
            s.Write("partial new content"u8);
            throw new InvalidOperationException("disk full, say");
        }))!;
        Assert.That(e.Message, Is.EqualTo("disk full, say"));
        Assert.That(File.ReadAllText(path), Is.EqualTo("old"));
        Assert.That(Directory.GetFiles(Dir).Select(Path.GetFileName), Is.EqualTo(new[] { "target.bin" }));
    }

    [Test]
    public void SuccessfulWriteReplacesContent()
    {
        string path = Path.Combine(Dir, "target.bin");
        AtomicFile.Write(path, s => s.Write("old content"u8));
        AtomicFile.Write(path, s => s.Write("new"u8));
        Assert.That(File.ReadAllText(path), Is.EqualTo("new"));
        Assert.That(Directory.GetFiles(Dir), Has.Length.EqualTo(1));
    }
}
