for (const name of process.argv.slice(2)) {
  const v = process.env[name];
  console.log(`${name}=${v === undefined ? "<unset>" : v}`);
}
