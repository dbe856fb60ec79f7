using NativeLora.Tests.Cli;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Hostile;

/// <summary>
/// The hostile pass, files through the CLI: `inspect` of something that is neither GGUF nor safetensors says
/// so in one line with the first bytes, whatever the extension (the readers' own hostile-file tests are in
/// Gguf/GgufHostileTests and SafeTensors/SafeTensorsHostileTests).
/// </summary>
public class FileTests : TempDirTests
{
    [Test]
    public void InspectOfAFileThatIsNeitherFormatSaysSoWithItsFirstBytes()
    {
        var cases = new (string Name, byte[] Bytes, string Says)[]
        {
            ("empty.gguf", Array.Empty<byte>(), "it is empty"),
            ("random.gguf", new byte[] { 0x13, 0x37, 0xC0, 0xDE, 0x00, 0xFF, 0x10, 0x20, 0x30, 0x40, 0x50 }, "first bytes 1337C0DE00FF10203"),
            ("short.safetensors", new byte[] { 1, 2, 3 }, "first bytes 010203"),
            ("text.gguf", "hello, this is text"u8.ToArray(), "first bytes 68656C6C6F2C207468"),
        };
        foreach (var (name, bytes, says) in cases)
        {
            var path = Path.Combine(Dir, name);
            File.WriteAllBytes(path, bytes);
            var (code, _, stderr) = CliTests.Run("inspect", path);
            Assert.That(code, Is.EqualTo(1), name);
            Assert.That(stderr.Trim(), Does.StartWith($"error: '{path}': not a GGUF or safetensors file (").And.Contain(says), name);
            Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), name);
        }
    }
}
