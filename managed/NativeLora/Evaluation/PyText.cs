using System.Text;

namespace NativeLora.Evaluation;

/// <summary>
/// The few Python <c>str</c> behaviours the reference implementations rely on, so that our
/// tokenization splits where theirs does: Python's whitespace set is wider than .NET's
/// <see cref="char.IsWhiteSpace(char)"/> (it includes U+001C–U+001F), and <c>len()</c> counts
/// code points, not UTF-16 units.
/// </summary>
internal static class PyText
{
    /// <summary>Python's <c>str.isspace()</c> for one BMP character (every Python whitespace character is in the BMP).</summary>
    public static bool IsSpace(char c) => c switch
    {
        >= '\t' and <= '\r' => true,
        >= '\u001c' and <= '\u001f' => true,
        ' ' or '\u0085' or '\u00a0' or '\u1680' => true,
        >= '\u2000' and <= '\u200a' => true,
        '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000' => true,
        _ => false,
    };

    /// <summary>Python's <c>s.split()</c> (no argument): runs of whitespace separate, no empty items.</summary>
    public static List<string> Split(string s)
    {
        var parts = new List<string>();
        int i = 0;
        while (i < s.Length)
        {
            while (i < s.Length && IsSpace(s[i])) i++;
            int start = i;
            while (i < s.Length && !IsSpace(s[i])) i++;
            if (i > start) parts.Add(s[start..i]);
        }
        return parts;
    }

    public static string Strip(string s)
    {
        int a = 0, b = s.Length;
        while (a < b && IsSpace(s[a])) a++;
        while (b > a && IsSpace(s[b - 1])) b--;
        return s[a..b];
    }

    public static string RStrip(string s)
    {
        int b = s.Length;
        while (b > 0 && IsSpace(s[b - 1])) b--;
        return s[..b];
    }

    /// <summary>Python's <c>len(s)</c>: code points (a surrogate pair is one; a lone surrogate also counts one).</summary>
    public static int Length(string s)
    {
        int n = 0;
        foreach (var _ in s.EnumerateRunes()) n++;
        return n;
    }

    public static int Utf8Length(string s) => Encoding.UTF8.GetByteCount(s);

    /// <summary>
    /// Python's <c>str.lower()</c>: .NET's invariant lower-casing plus Python's one unconditional
    /// special case, U+0130 İ → "i̇" (i and a combining dot, so it splits ROUGE tokens as in Python).
    /// Not reproduced: Greek final sigma (Python lower-cases a word-final Σ to ς, .NET to σ).
    /// </summary>
    public static string Lower(string s) => s.Replace("\u0130", "i\u0307", StringComparison.Ordinal).ToLowerInvariant();

    /// <summary>
    /// Python's <c>str.capitalize()</c> (3.8+): first character title-cased, the rest lower-cased.
    /// The first character uses .NET's invariant upper case (with the four Latin digraphs mapped to
    /// their title forms); Python's full mappings differ for a few characters (ß → "Ss", ligatures),
    /// none of which begin English benchmark text.
    /// </summary>
    public static string Capitalize(string s)
    {
        if (s.Length == 0) return s;
        if (Rune.DecodeFromUtf16(s, out var first, out int firstLen) != System.Buffers.OperationStatus.Done)
            return s[..1] + Lower(s[1..]); // a lone surrogate has no case
        // title case differs from upper case only for the Latin digraphs DŽ/Dž/dž, LJ/Lj/lj, NJ/Nj/nj, DZ/Dz/dz
        string head = first.Value switch
        {
            >= 0x01C4 and <= 0x01C6 => "\u01C5",
            >= 0x01C7 and <= 0x01C9 => "\u01C8",
            >= 0x01CA and <= 0x01CC => "\u01CB",
            >= 0x01F1 and <= 0x01F3 => "\u01F2",
            _ => Rune.ToUpperInvariant(first).ToString(),
        };
        return head + Lower(s[firstLen..]);
    }
}
