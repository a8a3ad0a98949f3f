#!/bin/bash
# Downloads the kernel matrix's packages (linux-image-*-cloud-amd64 of Debian 11, 12 and 13) from the
# Debian mirror with apt, through a private apt configuration under the cache folder, so the host's own
# sources and package lists stay untouched. Unpacks each to CACHE/<name>/{vmlinuz,version,lib/modules/KVER/}.
# Usage: fetch-kernels.sh CACHE NAME:SUITE [NAME:SUITE...]   e.g. deb11:bullseye deb12:bookworm
set -euo pipefail
cache=$1; shift
mkdir -p "$cache/apt/etc/apt.conf.d" "$cache/apt/etc/preferences.d" "$cache/apt/lists/partial" \
	"$cache/apt/archives/partial" "$cache/apt/state" "$cache/debs"
cache=$(cd "$cache" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
conf=$cache/apt/apt.conf
srcs=$cache/apt/sources.list
: >"$srcs"
for spec in "$@"; do
	suite=${spec#*:}
	{
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite-updates main"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security $suite-security main"
	} >>"$srcs"
done
cat >"$conf" <<CONF
Dir::Etc::SourceList "$srcs";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Parts "$cache/apt/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$cache/apt/etc/preferences.d";
Dir::State "$cache/apt/state";
Dir::State::Lists "$cache/apt/lists";
Dir::State::status "/dev/null";
Dir::Cache "$cache/apt";
Dir::Cache::Archives "$cache/apt/archives";
APT::Architecture "amd64";
Acquire::Languages "none";
Debug::NoLocking "true";
APT::Sandbox::User "root";
CONF
export APT_CONFIG=$conf
need_update=0
for spec in "$@"; do
	name=${spec%%:*}
	[ -s "$cache/$name/version" ] || need_update=1
done
[ "$need_update" = 1 ] || exit 0
apt-get -q update -o APT::Update::Error-Mode=any >"$cache/apt/update.log" 2>&1 || { cat "$cache/apt/update.log"; exit 1; }
for spec in "$@"; do
	name=${spec%%:*}; suite=${spec#*:}
	[ -s "$cache/$name/version" ] && continue
	# The newest ABI's cloud image in that release (the metapackage names it), security updates included.
	meta_ver=$(apt-cache madison linux-image-cloud-amd64 | awk -v s="$suite" '$0 ~ "/debian(-security)? "s"(-security|-updates)?/main" {print $3}' | sort -V | tail -1)
	[ -n "$meta_ver" ] || { echo "no linux-image-cloud-amd64 in $suite"; exit 1; }
	pkg=$(apt-cache show "linux-image-cloud-amd64=$meta_ver" | sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-cloud-amd64\(-unsigned\)\?\).*/\1/p' | head -1)
	[ -n "$pkg" ] || { echo "cannot resolve the cloud kernel of $suite"; exit 1; }
	echo "kernels: $name ($suite): $pkg"
	rm -rf "${cache:?}/${name:?}" && mkdir -p "$cache/$name/root"
	(cd "$cache/debs" && apt-get -q download "$pkg" >/dev/null)
	# shellcheck disable=SC2012 # Debian package file names: no spaces or newlines.
	deb=$(ls -t "$cache/debs/${pkg}_"*.deb | head -1)
	dpkg-deb -x "$deb" "$cache/$name/root"
	# Debian 13 ships merged-/usr packages: modules under usr/lib/modules. Laid out as NAME/lib/modules/KVER
	# with a modules.dep of its own (the package's postinst would run depmod), for modprobe -d NAME.
	moddir=$cache/$name/root/lib/modules
	[ -d "$moddir" ] || moddir=$cache/$name/root/usr/lib/modules
	# shellcheck disable=SC2012 # kernel release names: no spaces or newlines.
	kver=$(ls "$moddir" | head -1)
	cp "$cache/$name/root/boot/vmlinuz-$kver" "$cache/$name/vmlinuz"
	mkdir -p "$cache/$name/lib/modules"
	mv "$moddir/$kver" "$cache/$name/lib/modules/$kver"
	depmod -b "$cache/$name" "$kver"
	echo "$kver" >"$cache/$name/version"
	rm -rf "$cache/$name/root"
done
